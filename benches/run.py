#!/usr/bin/env python3
"""benches/run.py [--quick] [--out FILE] -- spiced against the reference clients,
measured in the same run against real QEMUs on 127.0.0.1; prints one markdown
table and writes it (with the machine and the command) to docs/benchmarks.md.
Run it through benches/run.sh, which builds the release binary first.

Reference clients (spice-gtk 0.42 from Debian): spicy-stats (C, headless) and
spice-gtk through Python GObject introspection (Debian's /usr/bin/python3 with
python3-gi and gir1.2-spiceclientglib-2.0). Each client gets its own QEMU: a
second client on one QEMU would take the session over.
"""
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
# --only display: just the display rows (mirror off and on, the X desktop), a
# few minutes instead of an hour; printed, not written to docs/benchmarks.md
# unless --out is given.
ONLY = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
OUT = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else os.path.join(ROOT, "docs", "benchmarks.md")
RUNS = 1 if QUICK else 5
IDLE = 10 if QUICK else 60
SPICED = os.path.join(ROOT, "target", "release", "spiced")
GUEST_SRC = os.path.join(ROOT, "tests", "guest", "vga-noise.S")
CHANNELS = 11
# What each client links of the 11 offered: spice-gtk 0.42 leaves one channel
# of this QEMU unlinked (it links 10).
EXPECT = {"spiced": 11, "spiced (mirror)": 11, "spicy-stats": 10, "spice-gtk (python)": 10,
          "remote-viewer": 9}
# remote-viewer (virt-viewer 11, spice-gtk underneath) draws into an Xvfb that
# main() starts when both are installed.
XDISPLAY = ":77"
WORK = tempfile.mkdtemp(prefix="spiced-bench-")

# A minimal headless spice-gtk client: links every channel the server offers
# and runs until killed. Proxy from SPICE_PROXY (spice-gtk reads it itself).
PYCLIENT = r"""
import sys, gi
gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, GObject, SpiceClientGLib
s = SpiceClientGLib.Session()
s.set_property("host", "127.0.0.1")
s.set_property("port", sys.argv[1])
keep = []
def on_event(ch, ev):
    if ev != SpiceClientGLib.ChannelEvent.OPENED:
        print("event", type(ch).__name__, ev.value_nick, flush=True)
def on_new(sess, ch):
    keep.append(ch)
    GObject.Object.connect(ch, "channel-event", on_event)
    if not isinstance(ch, SpiceClientGLib.MainChannel):
        ch.connect()
# Session.connect and Channel.connect are SPICE's; signals go through GObject's.
GObject.Object.connect(s, "channel-new", on_new)
s.connect()
GLib.MainLoop().run()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.f = self.sock.makefile("rw")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                return r.get("return")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Qemu:
    """One QEMU serving SPICE (11 channels) on 127.0.0.1, as scripts/lab-qemu.sh."""

    def __init__(self, paused=True, kernel=None, clients=1):
        self.port = free_port()
        self.paused, self.kernel = paused, kernel
        # spice-server takes more than one client only in its multi-client
        # mode (SPICE_DEBUG_ALLOW_MC=1): the first gets every channel, the
        # others main, display, inputs and cursor.
        self.clients = clients
        self.qmp_path = os.path.join(WORK, f"q{self.port}.qmp")
        self.proc = None
        self.qmp = None
        self.start()

    def args(self):
        a = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "64",
             "-nodefaults", "-no-user-config", "-display", "none", "-serial", "none",
             "-monitor", "none", "-device", "qxl-vga,id=video0",
             "-spice", f"addr=127.0.0.1,port={self.port},disable-ticketing=on",
             "-audiodev", "spice,id=snd0", "-device", "intel-hda", "-device", "hda-duplex,audiodev=snd0",
             "-device", "qemu-xhci,id=xhci",
             "-chardev", "spicevmc,name=usbredir,id=usbredir0", "-device", "usb-redir,chardev=usbredir0,bus=xhci.0",
             "-chardev", "spicevmc,name=usbredir,id=usbredir1", "-device", "usb-redir,chardev=usbredir1,bus=xhci.0",
             "-device", "usb-ccid,bus=xhci.0",
             "-chardev", "spicevmc,name=smartcard,id=smartcard0", "-device", "ccid-card-passthru,chardev=smartcard0",
             "-device", "virtio-serial-pci,id=vser0",
             "-chardev", "spicevmc,name=vdagent,id=vdagent0",
             "-device", "virtserialport,bus=vser0.0,chardev=vdagent0,name=com.redhat.spice.0",
             "-chardev", "spiceport,name=org.spice-space.webdav.0,id=webdav0",
             "-device", "virtserialport,bus=vser0.0,chardev=webdav0,name=org.spice-space.webdav.0",
             "-chardev", "spiceport,name=org.spice-space.bench.0,id=port0",
             "-device", "virtserialport,bus=vser0.0,chardev=port0,name=org.spice-space.bench.0",
             "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if self.paused:
            a.append("-S")
        if self.kernel:
            a += ["-kernel", self.kernel]
        return a

    def start(self):
        env = dict(os.environ, SPICE_DEBUG_ALLOW_MC="1") if self.clients > 1 else None
        self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(WORK, f"q{self.port}.log"), "a"), env=env)
        deadline = time.monotonic() + 20
        while not (port_accepts(self.port) and os.path.exists(self.qmp_path)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"QEMU on {self.port} did not start")
            time.sleep(0.02)
        while True:
            try:
                self.qmp = Qmp(self.qmp_path)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def channels(self):
        try:
            return len((self.qmp.cmd("query-spice") or {}).get("channels", []))
        except (OSError, ValueError, AttributeError):
            return -1

    def wait_channels(self, n, timeout):
        """Seconds until exactly n channels are connected, or None."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.channels() == n:
                return time.monotonic() - t0
            time.sleep(0.01)
        return None

    def kill(self):
        if self.qmp:
            self.qmp.close()
            self.qmp = None
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        while port_accepts(self.port):
            time.sleep(0.01)
        try:
            os.unlink(self.qmp_path)
        except OSError:
            pass

    def restart(self):
        self.kill()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def spiced_cmd(port, extra_vv="", toml=""):
    d = tempfile.mkdtemp(dir=WORK)
    vv = os.path.join(d, "c.vv")
    with open(vv, "w") as f:
        f.write(f"[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport={port}\n{extra_vv}")
    cfg = os.path.join(d, "s.toml")
    with open(cfg, "w") as f:
        f.write(f'[report]\nspool_dir = "{d}/spool"\n{toml}')
    return [SPICED, "--vv", vv, "--config", cfg], {"RUST_LOG": "info"}, os.path.join(d, "log")


# "spiced" is the daemon as it was before the display mirror ([display]
# mirror = false: the display channel drained, nothing decoded): every row
# measured before the mirror existed stays comparable. "spiced (mirror)"
# decodes the screen.
MIRROR_OFF = "[display]\nmirror = false\n"
MIRROR_ON = "[display]\nmirror = true\n"
CLIENTS = {
    "spiced": lambda port, proxy=None: spiced_cmd(port, f"proxy={proxy}\n" if proxy else "", MIRROR_OFF),
    "spiced (mirror)": lambda port, proxy=None: spiced_cmd(port, f"proxy={proxy}\n" if proxy else "", MIRROR_ON),
    "spicy-stats": lambda port, proxy=None: (["spicy-stats", "-h", "127.0.0.1", "-p", str(port)],
                                             {"SPICE_PROXY": proxy} if proxy else {}, None),
    "spice-gtk (python)": lambda port, proxy=None: (["/usr/bin/python3", "-c", PYCLIENT, str(port)],
                                                    {"SPICE_PROXY": proxy} if proxy else {}, None),
    "remote-viewer": lambda port, proxy=None: (["remote-viewer", f"spice://127.0.0.1:{port}"],
                                               dict({"DISPLAY": XDISPLAY}, **({"SPICE_PROXY": proxy} if proxy else {})),
                                               None),
}


def launch(kind, port, proxy=None):
    """The client's process and its log: spiced's stderr, else the stdout."""
    cmd, env, log = CLIENTS[kind](port, proxy)
    e = dict(os.environ)
    e.update(env)
    if log:
        return subprocess.Popen(cmd, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(log, "w")), log
    log = os.path.join(tempfile.mkdtemp(dir=WORK), "out")
    return subprocess.Popen(cmd, env=e, stdin=subprocess.DEVNULL, stdout=open(log, "w"),
                            stderr=subprocess.DEVNULL), log


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def memory(pid):
    """PSS, anonymous and RSS in kB, from smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in ("Pss", "Anonymous", "Rss"):
                out[k] = int(rest.split()[0])
    return out


def ticks(pid):
    """CPU time of a process so far, in 1/100 s: the scheduler's own on-CPU
    time (`/proc/PID/task/*/schedstat`, nanoseconds) summed over its threads.
    Not utime+stime from /proc/PID/stat: those are whole clock ticks, and an
    idle client running for microseconds per wakeup rounds to 0 in one window
    and 1 in another (50 idle spiced read 41 ticks/min in one run and 0 in the
    next). A thread that ends inside the window takes its time with it."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e7


class Wakeups:
    """Voluntary context switches summed over every thread of some processes
    over a window, threads that start or end within it included: sampled
    every `every` s (a thread living shorter than that is missed; a thread
    that ended counts what it had at the last sample)."""

    def __init__(self, pids, every=0.5):
        self.pids, self.every = list(pids), every
        self.first = self.read()
        self.last = dict(self.first)

    def read(self):
        out = {}
        for pid in self.pids:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for t in tids:
                try:
                    with open(f"/proc/{pid}/task/{t}/status") as f:
                        for line in f:
                            if line.startswith("voluntary_ctxt_switches"):
                                out[(pid, t)] = int(line.split()[1])
                                break
                except OSError:
                    pass
        return out

    def sleep(self, secs):
        """Sleeps `secs`, sampling."""
        end = time.monotonic() + secs
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(self.every, left))
            self.last.update(self.read())

    def total(self):
        self.last.update(self.read())
        return sum(v - self.first.get(k, 0) for k, v in self.last.items())


def received(pid):
    """Bytes the process's TCP sockets have received (ss, tcp_info)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True).stdout
    total, mine = 0, False
    for line in out.splitlines():
        if not line[:1].isspace():
            mine = f"pid={pid}," in line
            continue
        m = re.search(r"bytes_received:(\d+)", line) if mine else None
        if m:
            total += int(m.group(1))
    return total


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if len(xs) > 1 else None


KERNEL = None


def guest():
    global KERNEL
    if KERNEL is None:
        obj, elf = os.path.join(WORK, "g.o"), os.path.join(WORK, "g.elf")
        subprocess.run(["as", "--32", "-o", obj, GUEST_SRC], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x100000", "-o", elf, obj], check=True)
        KERNEL = elf
    return KERNEL


def idle_run(kind, live, extra=None):
    """(memory at the end, CPU time per minute (1/100 s), wakeups per minute, MB
    received) over IDLE s. `extra`: (vv lines, toml, env) for spiced."""
    q = Qemu(paused=not live, kernel=guest() if live else None)
    if extra:
        cmd, env, log = spiced_cmd(q.port, extra[0], extra[1])
        e = dict(os.environ, **env, **extra[2])
        p = subprocess.Popen(cmd, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=open(log, "w"))
    else:
        p, _ = launch(kind, q.port)
    try:
        if q.wait_channels(EXPECT[kind], 30) is None:
            return None
        time.sleep(5)
        t0, c0, b0 = time.monotonic(), ticks(p.pid), received(p.pid)
        w = Wakeups([p.pid])
        w.sleep(IDLE)
        dt = time.monotonic() - t0
        mem = memory(p.pid)
        mb = (received(p.pid) - b0) / 1e6
        return mem, (ticks(p.pid) - c0) * 60 / dt, w.total() * 60 / dt, mb
    finally:
        stop(p)
        q.kill()


def notify_socket():
    """A socket that takes sd_notify datagrams (and drops them): spiced sends
    its watchdog pings there."""
    path = os.path.join(WORK, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    return s, path


def features_run():
    """spiced with a metrics file, a control socket and WatchdogSec=60, VM
    paused: wakeups per minute (the extra work rides the server's PINGs)."""
    sock, path = notify_socket()
    d = tempfile.mkdtemp(dir=WORK)
    toml = (f'[metrics]\ntextfile = "{d}/spiced.prom"\n'
            f'[control]\nsocket = "{d}/spiced.sock"\n')
    try:
        r = idle_run("spiced", False, ("", toml, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"}))
        return None if r is None else r[2]
    finally:
        sock.close()


def start_run(kind):
    q = Qemu()
    try:
        t0 = time.monotonic()
        p, _ = launch(kind, q.port)
        up = q.wait_channels(EXPECT[kind], 30)
        took = time.monotonic() - t0 if up is not None else None
        stop(p)
        return took
    finally:
        q.kill()


def restart_run(down):
    """spiced linked; QEMU killed, restarted after `down` s: listening -> all up."""
    q = Qemu()
    cmd, env, log = spiced_cmd(q.port, toml="[reconnect]\nmax_attempts = 10\n" + MIRROR_OFF)
    e = dict(os.environ)
    e.update(env)
    p = subprocess.Popen(cmd, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        if q.wait_channels(CHANNELS, 30) is None:
            return None
        time.sleep(2)
        q.kill()
        time.sleep(down)
        q.start()
        listening = time.monotonic()
        up = q.wait_channels(CHANNELS, 60)
        return None if up is None else time.monotonic() - listening
    finally:
        stop(p)
        q.kill()


def behind_run(kind, proxy_cmd, pport, via_connect, hold):
    """A client through a proxy process listening on `pport` (an HTTP CONNECT
    proxy when `via_connect`, else a TCP forwarder the client dials as if it
    were the server), VM paused: channels on the QEMU after `hold` s."""
    q = Qemu()
    px = subprocess.Popen(proxy_cmd(q.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not port_accepts(pport):
            if px.poll() is not None:
                return None
            time.sleep(0.02)
        if via_connect:
            p, _ = launch(kind, q.port, proxy=f"http://127.0.0.1:{pport}")
        else:
            p, _ = launch(kind, pport)
        try:
            q.wait_channels(EXPECT[kind], 30)
            time.sleep(hold)
            return q.channels()
        finally:
            stop(p)
    finally:
        px.kill()
        px.wait()
        q.kill()


def proxy_run(kind):
    """Behind tinyproxy `Timeout 5` with the VM paused: channels after IDLE s."""
    pport = free_port()
    conf = os.path.join(WORK, f"tp{pport}.conf")

    def cmd(qport):
        with open(conf, "w") as f:
            f.write(f"Port {pport}\nListen 127.0.0.1\nTimeout 5\nAllow 127.0.0.1\nMaxClients 64\nConnectPort {qport}\n")
        return ["tinyproxy", "-d", "-c", conf]
    return behind_run(kind, cmd, pport, True, max(IDLE, 20))


def haproxy_run(kind):
    """Behind haproxy in TCP mode with 20 s client and server timeouts (a
    load balancer in front of the SPICE port, as kiosk fleets put one), VM
    paused: channels after IDLE s."""
    hport = free_port()
    conf = os.path.join(WORK, f"hap{hport}.cfg")

    def cmd(qport):
        with open(conf, "w") as f:
            f.write("global\n  maxconn 256\n"
                    "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 20s\n  timeout server 20s\n"
                    f"listen spice\n  bind 127.0.0.1:{hport}\n  server qemu 127.0.0.1:{qport}\n")
        return ["haproxy", "-db", "-f", conf]
    return behind_run(kind, cmd, hport, False, max(IDLE, 45))


def drained_bytes(kind, log):
    """Display bytes the client drained: spiced's log totals at its exit,
    spicy-stats's own summary."""
    with open(log) as f:
        text = f.read()
    pat = r"channel display totals: in (\d+) B" if kind.startswith("spiced") else r"^display: (\d+)"
    m = re.findall(pat, text, re.M)
    return int(m[-1]) / 1e6 if m else None


def drain_run(kind):
    """Display load (the vga-noise guest): CPU time (1/100 s) per MB the display drained,
    and MB/s, and the memory at the end of the window. Bytes: spiced's log
    totals, spicy-stats's own summary."""
    q = Qemu(paused=False, kernel=guest())
    p, log = launch(kind, q.port)
    try:
        if q.wait_channels(EXPECT[kind], 30) is None:
            return None
        c0, t0 = ticks(p.pid), time.monotonic()
        time.sleep(min(IDLE, 30))
        c1, dt = ticks(p.pid), time.monotonic() - t0
        mem = memory(p.pid)
        p.send_signal(signal.SIGINT if kind == "spicy-stats" else signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        # Whole-run totals (the settling time included), so MB/s uses the run's
        # length from the process start: close enough for a ratio.
        return (c1 - c0), dt, drained_bytes(kind, log), mem
    finally:
        stop(p)
        q.kill()


# The Xorg configuration the tests use too (tests/common/xspice.rs).
XSPICE_CONF = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "xspice",
                                "xorg.conf.in")).read().replace("{extra}", "")
XSPICE_MODE = {"width": 1024, "height": 768}


def have_xspice():
    return (os.path.exists("/usr/lib/xorg/Xorg")
            and os.path.exists("/usr/lib/xorg/modules/drivers/spiceqxl_drv.so")
            and shutil.which("xterm") is not None)


def xspice_drain_run(kind):
    """An X desktop under load (Xspice, 1024x768, as the SPICE lab's
    `xspice-server.sh --load`: an xterm 160x50 printing base64 of
    /dev/urandom): CPU time (1/100 s) per MB drained and memory at the end. One Xorg
    per client; 4 channels (main, display, inputs, cursor)."""
    port = free_port()
    disp = next(n for n in range(60, 200)
                if not os.path.exists(f"/tmp/.X{n}-lock") and not os.path.exists(f"/tmp/.X11-unix/X{n}"))
    d = tempfile.mkdtemp(dir=WORK)
    conf = os.path.join(d, "xorg.conf")
    with open(conf, "w") as f:
        f.write(XSPICE_CONF.format(port=port, **XSPICE_MODE))
    xorg = subprocess.Popen(["/usr/lib/xorg/Xorg", "-config", conf, "-logfile", os.path.join(d, "xorg.log"),
                             "-nolisten", "tcp", "-noreset", f":{disp}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    xterm = p = None
    try:
        deadline = time.monotonic() + 20
        while not port_accepts(port):
            if time.monotonic() > deadline or xorg.poll() is not None:
                return None
            time.sleep(0.05)
        xterm = subprocess.Popen(["xterm", "-geometry", "160x50", "-e", "base64", "/dev/urandom"],
                                 env=dict(os.environ, DISPLAY=f":{disp}"), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p, log = launch(kind, port)
        time.sleep(5)
        c0, t0 = ticks(p.pid), time.monotonic()
        time.sleep(min(IDLE, 30))
        c1, dt = ticks(p.pid), time.monotonic() - t0
        mem = memory(p.pid)
        p.send_signal(signal.SIGINT if kind == "spicy-stats" else signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        return (c1 - c0), dt, drained_bytes(kind, log), mem
    finally:
        for c in (p, xterm):
            if c:
                stop(c)
        xorg.terminate()
        try:
            xorg.wait(10)
        except subprocess.TimeoutExpired:
            xorg.kill()
            xorg.wait()


BLACKHOLE_CAP = 150


def nft(*args):
    subprocess.run(["nft", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def blackhole_run(kind):
    """VM paused, every packet to and from the QEMU port dropped (nft on lo):
    seconds from the drop to the client declaring the peer dead (spiced: its
    session-lost line; spicy-stats: its exit; python: a channel error event),
    and to the server dropping the client (QMP shows no channel)."""
    q = Qemu()
    p, log = launch(kind, q.port)
    table = f"spiced_bench_{q.port}"
    try:
        if q.wait_channels(EXPECT[kind], 30) is None:
            return None
        time.sleep(5)
        seen = os.path.getsize(log)
        nft("add", "table", "inet", table)
        nft("add", "chain", "inet", table, "in", "{ type filter hook input priority -10 ; }")
        nft("add", "rule", "inet", table, "in", "tcp", "dport", str(q.port), "drop")
        nft("add", "rule", "inet", table, "in", "tcp", "sport", str(q.port), "drop")
        t0 = time.monotonic()
        client = server = None
        pat = re.compile(r"session lost|channel \S+ lost|^event ", re.M)
        while time.monotonic() - t0 < BLACKHOLE_CAP and (client is None or server is None):
            now = time.monotonic() - t0
            if server is None and q.channels() == 0:
                server = now
            if client is None:
                with open(log) as f:
                    f.seek(seen)
                    if pat.search(f.read()) or p.poll() is not None:
                        client = now
            time.sleep(0.05)
        return client, server
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], stderr=subprocess.DEVNULL)
        stop(p)
        q.kill()


def many_run(kind, sessions=50, per_qemu=1):
    """`sessions` clients on one host, `per_qemu` of them per QEMU (VM paused;
    more than one only in spice-server's multi-client mode: the first client
    of a QEMU gets every channel, the others main, display, inputs and
    cursor): total PSS (MB), CPU time per minute (1/100 s), file descriptors and
    wakeups per second, summed over the clients, over an IDLE window once
    all are up; None if not all came up."""
    qs, procs = [], []
    want = EXPECT[kind] + 4 * (per_qemu - 1)
    try:
        for _ in range(-(-sessions // per_qemu)):
            qs.append(Qemu(clients=per_qemu))
        for i in range(per_qemu):
            for q in qs:
                if len(procs) < sessions:
                    procs.append(launch(kind, q.port)[0])
            # The first client of each QEMU is linked before the next comes.
            for q in qs:
                if i == 0 and q.wait_channels(EXPECT[kind], 120) is None:
                    return None
        if any(q.wait_channels(want, 180) is None for q in qs):
            return None
        time.sleep(5)
        c0, t0 = sum(ticks(p.pid) for p in procs), time.monotonic()
        w = Wakeups([p.pid for p in procs], every=2 if len(procs) > 100 else 0.5)
        w.sleep(IDLE)
        dt = time.monotonic() - t0
        cpu = (sum(ticks(p.pid) for p in procs) - c0) * 60 / dt
        wakes = w.total() / dt
        pss = sum(memory(p.pid)["Pss"] for p in procs) / 1024
        return pss, cpu, sum(fds(p.pid) for p in procs), wakes
    finally:
        for p in procs:
            stop(p)
        for q in qs:
            q.kill()


def mem_available_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0


# Measured here (QEMU 7.2, the lab QEMU, VM paused): PSS of a multi-client
# QEMU, MB, its base and per client; PSS per client process, MB (docs/benchmarks.md).
QEMU_BASE_MB, QEMU_PER_CLIENT_MB = 30, 9
CLIENT_MB = {"spiced": 5, "spicy-stats": 14, "spice-gtk (python)": 26}


def fitting(kind, sessions, per_qemu, margin_mb=4096):
    """The most sessions (at most `sessions`, whole QEMUs) whose QEMUs and
    clients fit in the memory available now with `margin_mb` to spare."""
    per_session = QEMU_BASE_MB / per_qemu + QEMU_PER_CLIENT_MB + CLIENT_MB[kind]
    n = int((mem_available_mb() - margin_mb) / per_session)
    return max(0, min(sessions, n - n % per_qemu))


def fmt(v, unit="", nd=1):
    if v is None:
        return "—"
    return f"{v:.{nd}f}{unit}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return "—"
    return f"{a / b:.2f}"


def cell(xs, unit="", nd=1):
    m, s = med(xs), spread(xs)
    if m is None:
        return "—"
    return fmt(m, unit, nd) + (f" ({fmt(s[0], '', nd)}–{fmt(s[1], '', nd)})" if s else "")


def xvfb():
    """An Xvfb for remote-viewer, or None when either is not installed."""
    if not (shutil.which("Xvfb") and shutil.which("remote-viewer")):
        return None
    x = subprocess.Popen(["Xvfb", XDISPLAY, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = f"/tmp/.X11-unix/X{XDISPLAY[1:]}"
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if time.monotonic() > deadline or x.poll() is not None:
            x.kill()
            return None
        time.sleep(0.05)
    return x


def main():
    x = xvfb()
    try:
        run_all(x is not None)
    finally:
        if x:
            x.kill()
            x.wait()


def run_all(with_rv):
    refs = ["spicy-stats", "spice-gtk (python)"] + (["remote-viewer"] if with_rv else [])
    if ONLY == "display":
        refs = ["spicy-stats"]
    kinds = ["spiced"] + refs
    # Rows about the network engine only: remote-viewer's is spice-gtk, the
    # same as the python client's, so it is measured where the UI costs.
    net_kinds = kinds[:3]
    rows = []

    def row(name, vals, unit="", nd=1, lower_better=True):
        """vals: kind -> list of numbers."""
        s = med(vals.get("spiced", []))
        r = [cell(vals.get(k, []), unit, nd) for k in kinds]
        rat = [ratio(s, med(vals.get(k, []))) for k in refs]
        rows.append([name] + r + rat)
        print(f"  {name}: " + ", ".join(f"{k} {c}" for k, c in zip(kinds, r)), flush=True)

    print(f"benches: {'quick' if QUICK else 'full'} run, {RUNS} run(s) per row, idle window {IDLE} s"
          + (f", only the {ONLY} rows" if ONLY else ""), flush=True)
    if ONLY != "display":
        network_rows(row, kinds, refs, net_kinds)
    display_rows(row, refs)
    finish(rows, kinds, refs)


def network_rows(row, kinds, refs, net_kinds):
    for live in (False, True):
        # A run is longer than a minute: once each.
        res = {k: [idle_run(k, live)] for k in kinds}
        tag = "live screen" if live else "VM paused"
        if not live:
            for key, label in (("Pss", "PSS"), ("Anonymous", "anonymous"), ("Rss", "RSS")):
                row(f"memory idle, {label} (MB)", {k: [r[0][key] / 1024 for r in v if r] for k, v in res.items()}, nd=1)
        row(f"CPU, {tag} (1/100 s of CPU per min)", {k: [r[1] for r in v if r] for k, v in res.items()}, nd=2)
        row(f"wakeups, {tag} (per s)", {k: [r[2] / 60 for r in v if r] for k, v in res.items()}, nd=2)
        if live:
            row("wakeups per MB drained, live screen",
                {k: [r[2] * IDLE / 60 / r[3] for r in v if r and r[3] > 0] for k, v in res.items()}, nd=2)
    row("wakeups, VM paused, with a metrics file, a control socket and WatchdogSec=60 (per s)",
        {"spiced": [w / 60 for w in [features_run()] if w is not None]}, nd=2)
    row("start → all channels up (s)", {k: [start_run(k) for _ in range(RUNS)] for k in kinds}, nd=2)
    for down in ((2,) if QUICK else (2, 10, 40)):
        row(f"server down {down} s: listening → all channels up (s)",
            {"spiced": [restart_run(down) for _ in range(1 if QUICK else 3)]}, nd=2)
    if shutil.which("nft") and os.geteuid() == 0:
        bh = {k: blackhole_run(k) for k in net_kinds}
        row(f"black hole, VM paused: drop → client declares the peer dead (s; cap {BLACKHOLE_CAP})",
            {k: [v[0]] for k, v in bh.items() if v}, nd=1)
        row("black hole, VM paused: drop → the server drops the client (s)",
            {k: [v[1]] for k, v in bh.items() if v}, nd=1)
    n = 10 if QUICK else 50
    many = {k: many_run(k, n) for k in net_kinds}
    for i, label, nd in ((0, "total PSS (MB)", 0), (1, "CPU (1/100 s of CPU per min)", 1),
                         (2, "file descriptors", 0), (3, "wakeups (per s)", 2)):
        row(f"{n} sessions (one QEMU each, VM paused): {label}", {k: [v[i]] for k, v in many.items() if v}, nd=nd)
    # 500 sessions: one QEMU each would take ~17 GB here; in spice-server's
    # multi-client mode ten sessions share a QEMU (the python client, the
    # same network engine as spicy-stats at twice its memory, is left out).
    per_qemu = 10
    big = 20 if QUICK else 500
    scale = {k: fitting(k, big, per_qemu) for k in ("spiced", "spicy-stats")}
    m = min(scale.values())
    if m < big:
        print(f"  {big} sessions do not fit in the memory available: {m}", flush=True)
    if m >= per_qemu:
        many = {k: many_run(k, m, per_qemu) for k in scale}
        tag = f"{m} sessions ({m // per_qemu} QEMUs, {per_qemu} sessions each, VM paused)"
        for i, label, nd in ((0, "total PSS (MB)", 0), (1, "CPU (1/100 s of CPU per min)", 1),
                             (3, "wakeups (per s)", 1)):
            row(f"{tag}: {label}", {k: [v[i]] for k, v in many.items() if v}, nd=nd)
        row(f"{tag}: PSS per session (MB)", {k: [v[0] / m] for k, v in many.items() if v}, nd=2)
    if shutil.which("tinyproxy"):
        row("behind tinyproxy `Timeout 5`, VM paused: channels up at the end",
            {k: [proxy_run(k)] for k in net_kinds}, nd=0)
    if shutil.which("haproxy"):
        hap = {k: haproxy_run(k) for k in net_kinds}
        row("behind haproxy (`mode tcp`, `timeout client/server 20s`), VM paused: channels up at the end",
            {k: [v] for k, v in hap.items() if v is not None}, nd=0)


def display_rows(row, refs):
    """The display channel under load, spiced with the mirror off (as before
    it existed) and on, against spicy-stats (which decodes too) in the same
    run. In the mirror rows the spiced column is spiced with the mirror on."""
    on = "spiced (mirror)"
    mb = lambda v: v / 1024
    # Idle, VM paused (-S: the screen QEMU shows before any guest code).
    idle = {k: idle_run(k, False) for k in ("spiced", on, "spicy-stats")}
    for mode, k in (("off", "spiced"), ("on", on)):
        row(f"wakeups idle, VM paused, mirror {mode} (per s)",
            {"spiced": [idle[k][2] / 60] if idle[k] else [],
             "spicy-stats": [idle["spicy-stats"][2] / 60] if idle["spicy-stats"] else []}, nd=2)
    for key, label in (("Pss", "PSS"), ("Anonymous", "anonymous")):
        row(f"memory idle, mirror off, {label} (MB)",
            {k: [mb(idle[k][0][key])] for k in ("spiced", "spicy-stats") if idle[k]}, nd=1)
        row(f"memory idle, mirror on, {label} (MB)",
            {"spiced": [mb(idle[on][0][key])] if idle[on] else [],
             "spicy-stats": [mb(idle["spicy-stats"][0][key])] if idle["spicy-stats"] else []}, nd=1)
    kinds3 = ("spiced", on, "spicy-stats")
    # Several rounds, the three clients taking turns: a shared machine's load
    # moves during a run, and each round puts all three under the same load.
    rounds = 1 if QUICK else 3

    def drains(fn):
        out = {k: [] for k in kinds3}
        for _ in range(rounds):
            for k in kinds3:
                r = fn(k)
                if r and r[2]:
                    out[k].append(r)
        return out

    def per_mb(rs):
        return [r[0] / r[2] for r in rs]

    def load_rows(tag, d, off_label=None):
        ref = d["spicy-stats"]
        # The vga-noise rows with the mirror off keep their names from before
        # the mirror: the same measurement.
        row(off_label or f"{tag}, mirror off: CPU (1/100 s) per MB drained",
            {"spiced": per_mb(d["spiced"]), "spicy-stats": per_mb(ref)}, nd=2)
        row(f"{tag}, mirror on: CPU (1/100 s) per MB drained",
            {"spiced": per_mb(d[on]), "spicy-stats": per_mb(ref)}, nd=2)
        for mode, k in (("off", "spiced"), ("on", on)):
            name = f"{tag}, mirror {mode}: MB drained in the run"
            if off_label and mode == "off":
                name = "display load: MB drained in the run (same guest)"
            row(name, {"spiced": [r[2] for r in d[k]], "spicy-stats": [r[2] for r in ref]}, nd=1)
        for key, label in (("Anonymous", "anonymous"), ("Pss", "PSS")):
            for mode, k in (("off", "spiced"), ("on", on)):
                row(f"{tag}, mirror {mode}: {label} at the end (MB)",
                    {"spiced": [mb(r[3][key]) for r in d[k]],
                     "spicy-stats": [mb(r[3][key]) for r in ref]}, nd=1)

    load_rows("display load (vga-noise, 720x400)", drains(drain_run),
              off_label="display load: CPU (1/100 s) per MB drained")
    if not have_xspice():
        print("  (no Xorg with spiceqxl, or no xterm: the X desktop rows are left out)", flush=True)
        return
    load_rows("X desktop load (Xspice 1024x768)", drains(xspice_drain_run))


def finish(rows, kinds, refs):
    head = ["row"] + kinds + [f"spiced / {r}" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    table = "\n".join(lines)
    print("\n" + table)
    if ONLY and "--out" not in sys.argv:
        return
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}"
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    with open(OUT, "w") as f:
        f.write(BENCH_DOC.format(
            when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            cmd="bash benches/run.sh" + (" --quick" if QUICK else ""),
            machine=machine, qemu=qemu, runs=RUNS, idle=IDLE, table=table, cap=BLACKHOLE_CAP))
    print(f"\nwritten to {OUT}")


BENCH_DOC = """# Benchmarks

spiced against the reference SPICE clients, measured **in the same run** against
real QEMUs (TCG, no guest disk, 11 SPICE channels) on 127.0.0.1. Reference
clients: spice-gtk 0.42 as `spicy-stats` (C, headless) and through Python
GObject introspection (`spice-gtk (python)`), and remote-viewer (virt-viewer
11) drawing into an Xvfb (`benches/run.sh` installs both when they are missing).
Each client has its own QEMU (a second client would take the session over).
Rows about the network alone (black hole, 50 sessions, the proxy) leave
remote-viewer out: its network engine is spice-gtk, the python client's.

- Command: `{cmd}`; {when}
- Machine: {machine}; {qemu}
- {runs} run(s) per row where a run takes under a minute (median, then min–max);
  idle windows of {idle} s after all channels are up and 5 s of settling.
- Memory from `/proc/PID/smaps_rollup` (PSS counts shared pages by share; RSS
  counts the whole binary and libraries). Wakeups: voluntary context switches
  summed over the client's threads, sampled every 0.5 s (2 s above 100
  processes) so threads that start or end within the window count too.
  Bytes drained: the client's TCP sockets' `bytes_received` (`ss -ti`).
  CPU: the scheduler's on-CPU time (`/proc/PID/task/*/schedstat`) summed over
  the client's threads, in hundredths of a second; not clock ticks, which an
  idle client running for microseconds per wakeup rounds to 0 or 1 at random.
- "server down N s": QEMU killed while spiced is linked, restarted on the same
  port N s later; from the moment it listens to all 11 channels up (QMP
  `query-spice`). spiced runs with `max_attempts = 10` so a 40 s outage is
  inside its give-up point. The reference clients do not reconnect at all.
- "black hole": VM paused, every packet to and from the QEMU port dropped by an
  nft rule on lo; from the drop to the client's first sign that it knows
  (spiced: its `session lost` or `channel … lost` line; spicy-stats: its exit;
  the python client: a channel error event), capped at {cap} s, and to QMP
  showing none of the client's channels (the server's own view). One run each.
- "N sessions": N clients of one kind at once, each against its own paused
  QEMU (spice-server offers a second client of one VM only main, display,
  inputs and cursor); PSS, CPU over the idle window, open descriptors and
  wakeups, summed over the clients. One run each.
- "N sessions (N/10 QEMUs, 10 sessions each)": one QEMU per session would
  take ~17 GB for 500 (34 MB PSS each with its client, the lab QEMU); in
  spice-server's multi-client mode (`SPICE_DEBUG_ALLOW_MC=1`) ten sessions
  share a QEMU, ~9 MB each: the first gets every channel, the others main,
  display, inputs and cursor, each channel with its own PING timer. One
  client process per session, as spiced is deployed (one systemd instance per
  kiosk). N is 500, or what fits in the memory available with 4 GB to spare
  (the row says). The python client (spicy-stats' network engine at twice its
  memory) is left out.

{table}

## Reading the table

- **Wakeups with the VM paused**: an idle session is woken by the server
  alone: spice-server PINGs display and main every ~15 s, some 30 ms apart.
  spiced's keepalives (spice-gtk sends none) and all its other periodic work
  ride on those two wakeups; its one timer of its own (a timerfd) rings only
  when nothing else woke it, once, at the deadline ([keepalive.md](keepalive.md)).
  With a metrics file the file is rewritten about every 15 s on a thread of
  its own (one or two wakeups of that thread per write: the rename can block
  on a disk filesystem); the watchdog ping rides the PINGs; the control
  socket costs nothing while no client is connected.
- **Wakeups with a live screen**: the guest's screen changes ~30 times a
  second; spice-server writes each update as ~20 messages of ~5 KB over
  2–3 ms, and they reach the client in two or three pieces (a 64 KB
  segment on loopback, then the rest). A client woken by every piece wakes
  two or three times per update. Once updates recur, spiced sets its display
  socket's receive low-water mark (SO_RCVLOWAT) to three quarters of the
  last update, so the kernel wakes it once the update is mostly in; the mark
  never asks for more than half the messages the server may send before it
  waits for an ACK, data under a mark is read within 1.5 update periods,
  and marks back off each time data had to wait for that deadline
  ([architecture.md](architecture.md), `wake::lowat`). An X desktop under
  load has no updates to count: small draws arrive back to back (~13 MB/s,
  a read of ~2 KB per wakeup, ~9,700 wakeups a second). Once such a run has
  lasted 20 ms, the mark is what the stream brings in 2 ms (under the same
  ACK ceiling, in 4 KiB steps), read by a 5 ms deadline if the stream
  pauses: ~70 wakeups per MB drained instead of ~700 (spicy-stats ~470).
- **Memory**: spiced's anonymous memory is ~1.3 MB; the rest of its RSS
  is file-backed: the pages of its own binary and of libc that it touches.
- **Black hole**: spice-gtk learns of it from TCP keepalive alone (idle 30 s,
  then 3 probes 15 s apart: about 70 s); spiced from its own keepalive (at
  most 15 s of silence) and `TCP_USER_TIMEOUT` (25 s of unacknowledged data),
  so about 33 s. The server's view does not depend on the client: spice-server
  drops a channel 30 s after a PING went unanswered, and QMP shows none of the
  client's channels some 53–55 s after the drop.
- **N sessions**: with the VM paused, a session costs what its wakeups cost
  (the server's PINGs, and the keepalives riding them). CPU: spice-server's
  PING period is 15 s plus the round trip (its timer restarts at the PONG), so
  an idle channel's keepalive, due 15 s after the last PING, waits a few
  milliseconds for the next one (`keepalive.ping_grace_secs`, 0.25 s): 13
  sends per 15 s per session (9 keepalives, 4 PONGs) against spice-gtk's 4
  PONGs, no timer wakeup; on loopback each send also runs the server's receive
  path (and often a switch to QEMU) in the sender's CPU time. With
  `ping_grace_secs = 0` (never past 15 s) every idle channel sends at both PING
  wakeups of a period, 24 sends, and this row read 1.4-1.6x
  ([keepalive.md](keepalive.md)). Until
  2026-12-06 this row counted clock ticks (41 vs 7 one day, 0 vs 4 the next
  for the same setup); it now reads the scheduler's on-CPU time. File descriptors:
  spiced links 11 channels per session, spice-gtk 10; spiced has one more per
  process for its timer (timerfd).
- **The reference clients do not reconnect**: when the server goes away they
  stay disconnected, so the restart rows have no reference figure.
- **The display mirror** (`[display] mirror`, [display.md](display.md)):
  "spiced" is the daemon with the mirror off (the display channel drained,
  nothing decoded), so every row above is the same measurement as before
  the mirror existed; the "mirror on" rows put spiced with the mirror in the
  spiced column. spicy-stats decodes the display too (spice-gtk's canvas).
  The load rows are three rounds of the three clients taking turns (median,
  then min–max). "display load" is the vga-noise guest (QEMU's VGA text
  screen, 720x400, redrawn some 30 times a second in 32-pixel strips, LZ);
  "X desktop load" is Xspice at 1024x768 with an xterm printing base64 of
  /dev/urandom (the text lines as LZ images, fills, now and then a scroll).
  The mirror's targets: CPU per MB at most half of spicy-stats', and at most
  one screen (width x height x 4) + 2 MB more anonymous memory than with the
  mirror off.
- **Behind the idle-cutting proxy** the reference clients lose the whole
  session (they send nothing on idle channels; the proxy cuts main, and the
  server drops the rest); spiced's keepalives keep all 11 channels.
  **Behind haproxy** (TCP mode, 20 s timeouts, the client connecting to
  haproxy's port as to the server's) every channel silent for 20 s is cut:
  the references keep only the channels the server PINGs; spiced's 15 s
  keepalives keep all 11.
"""

if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
