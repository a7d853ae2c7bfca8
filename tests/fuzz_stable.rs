//! The fuzz targets (`spiced::fuzz`) on the stable toolchain: a seeded mutation
//! loop over each target's corpus (`fuzz/corpus/<target>/`), for CI machines and
//! developers without cargo-fuzz. Each input runs under a counting allocator:
//! no panic, and no input may make a parser hold more than `ALLOC_CAP`.
//!
//! `SPICED_FUZZ_SECS` (default 1) is the time per target; `SPICED_FUZZ_SEED`
//! replays a run. A failing input is written to `target/fuzz-failures/`.

mod common;
use common::Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The most any one input may have allocated at once.
const ALLOC_CAP: usize = 96 << 20;
/// The largest input the mutator builds.
const MAX_INPUT: usize = 64 << 10;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Values that make parsers take edge paths: lengths, counts, offsets.
const INTERESTING: [u32; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x10000,
    0x7fff_ffff,
    0xffff_fffe,
    u32::MAX,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 if len < MAX_INPUT => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i).min(64) + 1;
                input.drain(i..(i + n).min(len));
            }
            4 if len >= 4 => {
                // A length or count field set to an edge value.
                let i = rng.below(len - 3);
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                input[i..i + 4].copy_from_slice(&v);
            }
            5 if !corpus.is_empty() => {
                // Splice in a piece of another seed.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + rng.below(256) + 1).min(other.len());
                    let at = rng.below(len + 1);
                    let tail = input.split_off(at);
                    input.extend_from_slice(&other[a..b]);
                    input.extend(tail);
                }
            }
            6 if len > 1 => {
                // Repeat a chunk (messages that come again and again).
                let a = rng.below(len);
                let b = (a + rng.below(128) + 1).min(len);
                let piece = input[a..b].to_vec();
                for _ in 0..rng.below(16) {
                    input.extend_from_slice(&piece);
                }
            }
            _ => {
                let i = rng.below(len + 1);
                input.truncate(i);
            }
        }
    }
    input.truncate(MAX_INPUT);
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    seeds.push(Vec::new());
    seeds
}

fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{target}-{:016x}.bin", fnv(input)));
    let _ = std::fs::write(&p, input);
    p
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs one input; Err with why when an invariant broke.
fn check(f: fn(&[u8]), input: &[u8]) -> Result<(), String> {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = std::panic::catch_unwind(|| f(input));
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    match r {
        Err(_) => Err("panicked".into()),
        Ok(()) if peak > ALLOC_CAP => Err(format!("allocated {peak} bytes at once")),
        Ok(()) => Ok(()),
    }
}

#[test]
fn every_parser_survives_mutated_input() {
    let secs: f64 = std::env::var("SPICED_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let seed: u64 = std::env::var("SPICED_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    // Panics are expected to be caught here, not printed for every input.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for (name, f) in spiced::fuzz::TARGETS {
        let seeds = corpus(name);
        let mut rng = Rng(seed ^ fnv(name.as_bytes()));
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut runs = 0u64;
        // Every seed as it is first, then mutants until the time is up.
        for s in &seeds {
            if let Err(why) = check(f, s) {
                failures.push(format!(
                    "{name}: seed {}: {why}",
                    save_failure(name, s).display()
                ));
            }
            runs += 1;
        }
        while Instant::now() < end {
            let mut input = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut input, &seeds);
            if let Err(why) = check(f, &input) {
                failures.push(format!(
                    "{name}: {}: {why}",
                    save_failure(name, &input).display()
                ));
                break;
            }
            runs += 1;
        }
        lines.push(format!("{name}: {runs} inputs, {} seeds", seeds.len() - 1));
    }
    let _ = std::panic::take_hook();
    eprintln!(
        "stable fuzzing, seed {seed}, {secs} s per target:\n  {}",
        lines.join("\n  ")
    );
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
}
