//! A hand-written pcap encoder that turns per-channel plaintext SPICE byte
//! streams into synthetic Ethernet/IPv4/TCP packets, so Wireshark and tshark
//! follow each channel as one TCP conversation and the SPICE dissector decodes it.
//!
//! The addresses are documentation ranges (192.0.2.1 client, 198.51.100.1 server):
//! the capture is a reconstruction of what spiced saw after TLS, not a wire trace.

use crate::tap::Direction;
use std::time::Duration;

/// Largest TCP payload per synthetic segment (IPv4 total length must fit u16).
pub const MAX_SEGMENT: usize = 65_000;

const LINKTYPE_ETHERNET: u32 = 1;
const CLIENT_IP: [u8; 4] = [192, 0, 2, 1];
const SERVER_IP: [u8; 4] = [198, 51, 100, 1];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_ISN: u32 = 0x1000_0000;
const SERVER_ISN: u32 = 0x2000_0000;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// One channel connection: its client port and its records in arrival order.
pub struct PcapStream<'a> {
    pub client_port: u16,
    pub records: Vec<(Direction, Duration, &'a [u8])>,
    /// Emit a FIN from the client after the last record (the stream is over).
    pub closed: bool,
}

struct Packet {
    at: Duration,
    from_client: bool,
    client_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    /// (stream index, record index, byte range): the payload, borrowed at encode time.
    data: Option<(usize, usize, std::ops::Range<usize>)>,
}

/// Encodes every stream into one pcap file (microsecond timestamps,
/// LINKTYPE_ETHERNET). `start_unix` is the wall-clock time of `Duration::ZERO`.
pub fn write_pcap(streams: &[PcapStream<'_>], server_port: u16, start_unix: f64) -> Vec<u8> {
    let mut packets: Vec<Packet> = Vec::new();
    for (si, s) in streams.iter().enumerate() {
        let Some(first) = s.records.first() else {
            continue;
        };
        let start = first.1;
        let hs = |seq, ack, flags, from_client| Packet {
            at: start,
            from_client,
            client_port: s.client_port,
            seq,
            ack,
            flags,
            data: None,
        };
        // Synthetic three-way handshake so dissectors see the stream start.
        packets.push(hs(CLIENT_ISN, 0, SYN, true));
        packets.push(hs(SERVER_ISN, CLIENT_ISN.wrapping_add(1), SYN | ACK, false));
        packets.push(hs(
            CLIENT_ISN.wrapping_add(1),
            SERVER_ISN.wrapping_add(1),
            ACK,
            true,
        ));
        let mut cli_seq = CLIENT_ISN.wrapping_add(1);
        let mut srv_seq = SERVER_ISN.wrapping_add(1);
        // Arrival order is the truth (sequence numbers follow it): keep time
        // monotonic within the stream so sorting by time cannot reorder it.
        let mut last_at = start;
        for (ri, (dir, at, data)) in s.records.iter().enumerate() {
            let from_client = matches!(dir, Direction::ToServer);
            let at = (*at).max(last_at);
            last_at = at;
            let mut off = 0;
            while off < data.len() {
                let end = (off + MAX_SEGMENT).min(data.len());
                let (seq, ack) = if from_client {
                    (cli_seq, srv_seq)
                } else {
                    (srv_seq, cli_seq)
                };
                let len = (end - off) as u32;
                if from_client {
                    cli_seq = cli_seq.wrapping_add(len);
                } else {
                    srv_seq = srv_seq.wrapping_add(len);
                }
                packets.push(Packet {
                    at,
                    from_client,
                    client_port: s.client_port,
                    seq,
                    ack,
                    flags: if end == data.len() { PSH | ACK } else { ACK },
                    data: Some((si, ri, off..end)),
                });
                off = end;
            }
        }
        if s.closed {
            packets.push(Packet {
                at: last_at,
                from_client: true,
                client_port: s.client_port,
                seq: cli_seq,
                ack: srv_seq,
                flags: FIN | ACK,
                data: None,
            });
        }
    }
    // Merge the streams by time; stable, so each stream keeps its own order.
    packets.sort_by_key(|p| p.at);

    let payload_total: usize = streams
        .iter()
        .flat_map(|s| s.records.iter())
        .map(|r| r.2.len())
        .sum();
    let mut out = Vec::with_capacity(24 + payload_total + packets.len() * 70);
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&262_144u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());

    let mut ip_id: u16 = 0;
    for p in &packets {
        let payload: &[u8] = match &p.data {
            Some((si, ri, range)) => streams
                .get(*si)
                .and_then(|s| s.records.get(*ri))
                .and_then(|r| r.2.get(range.clone()))
                .unwrap_or(&[]),
            None => &[],
        };
        ip_id = ip_id.wrapping_add(1);
        encode_packet(&mut out, p, payload, server_port, start_unix, ip_id);
    }
    out
}

fn encode_packet(
    out: &mut Vec<u8>,
    p: &Packet,
    payload: &[u8],
    server_port: u16,
    start_unix: f64,
    ip_id: u16,
) {
    let (src_ip, dst_ip, src_mac, dst_mac, sport, dport) = if p.from_client {
        (
            CLIENT_IP,
            SERVER_IP,
            CLIENT_MAC,
            SERVER_MAC,
            p.client_port,
            server_port,
        )
    } else {
        (
            SERVER_IP,
            CLIENT_IP,
            SERVER_MAC,
            CLIENT_MAC,
            server_port,
            p.client_port,
        )
    };
    let ip_len = 20 + 20 + payload.len();
    let frame_len = 14 + ip_len;

    let ts = (start_unix.max(0.0) + p.at.as_secs_f64()).max(0.0);
    let secs = ts.floor();
    let usecs = ((ts - secs) * 1e6).round().min(999_999.0);
    out.extend_from_slice(&(secs as u32).to_le_bytes());
    out.extend_from_slice(&(usecs as u32).to_le_bytes());
    out.extend_from_slice(&(frame_len as u32).to_le_bytes());
    out.extend_from_slice(&(frame_len as u32).to_le_bytes());

    // Ethernet II
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&0x0800u16.to_be_bytes());

    // IPv4
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src_ip);
    ip[16..20].copy_from_slice(&dst_ip);
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&ip);

    // TCP
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&p.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&p.ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = p.flags;
    tcp[14..16].copy_from_slice(&65_535u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src_ip);
    pseudo[4..8].copy_from_slice(&dst_ip);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    let c = checksum(&[&pseudo, &tcp, payload]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&tcp);
    out.extend_from_slice(payload);
}

/// The Internet checksum over the concatenation of `parts` (each but the last
/// has even length here: 12- and 20-byte headers).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_valid_header_is_zero() {
        // A header with its checksum filled in sums to 0xffff (checksum 0).
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&CLIENT_IP);
        ip[16..20].copy_from_slice(&SERVER_IP);
        let c = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&[&ip]), 0);
    }

    #[test]
    fn large_record_is_split_and_sequenced() {
        let big = vec![7u8; MAX_SEGMENT * 2 + 10];
        let s = PcapStream {
            client_port: 40_000,
            records: vec![(Direction::ToClient, Duration::from_secs(1), &big[..])],
            closed: false,
        };
        let pcap = write_pcap(&[s], 5900, 1_700_000_000.0);
        // 3 handshake packets + 3 segments.
        let mut off = 24;
        let mut lens = vec![];
        let mut seqs = vec![];
        while off < pcap.len() {
            let incl = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
            let frame = &pcap[off + 16..off + 16 + incl];
            let payload = incl - 54;
            lens.push(payload);
            seqs.push(u32::from_be_bytes(frame[38..42].try_into().unwrap()));
            off += 16 + incl;
        }
        assert_eq!(lens, vec![0, 0, 0, MAX_SEGMENT, MAX_SEGMENT, 10]);
        assert_eq!(seqs[3], SERVER_ISN + 1);
        assert_eq!(seqs[4], SERVER_ISN + 1 + MAX_SEGMENT as u32);
        assert_eq!(seqs[5], SERVER_ISN + 1 + 2 * MAX_SEGMENT as u32);
    }
}
