//! The fuzz targets, bounded, in every `cargo test` (coverage-guided fuzzing is `fuzz/run.sh`,
//! libFuzzer on stable, which `tests/run-all.sh` runs after the tests): each target replays its checked-in seeds
//! (`fuzz/seeds/<target>/`) and then feeds it mutations of them for a few seconds, coverage-free
//! (a deterministic xorshift from a printed seed, so a finding reproduces with
//! `CANOPY_FUZZ_SEED=<seed>`). Cost: `CANOPY_FUZZ_SECONDS` per target (default 4; the two targets
//! run in parallel). The entry points and the promises they assert are in
//! `canopy_controller::fuzzing`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use canopy_controller::fuzzing::{ControlTarget, CrashRecordTarget};
use canopy_controller::testing::fuzz::Rng;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn budget() -> Duration {
    let seconds = std::env::var("CANOPY_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    Duration::from_secs_f64(seconds)
}

fn rng(target: &str) -> Rng {
    let seed = std::env::var("CANOPY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("{target}: CANOPY_FUZZ_SEED={seed}");
    Rng(seed)
}

/// Tokens worth splicing into requests and records.
const TOKENS: &[&[u8]] = &[
    b"..",
    b"/",
    b"//",
    b"./",
    b"\\u0000",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"-1",
    b"4294967295",
    b"18446744073709551616",
    b"null",
    b"\"cgroup\":",
    b"\"pid\":101",
    b"\"policy\":6",
    b"\"priority\":99",
    b"/sys/fs/cgroup/",
    b"user@1001.service",
    b"\xff",
];

/// One mutation of one seed (1 to 4 edits, sometimes spliced with another seed or grown long).
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len() as u64) as usize].clone();
    for _ in 0..=rng.below(4) {
        let at = if v.is_empty() {
            0
        } else {
            rng.below(v.len() as u64 + 1) as usize
        };
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, rng.below(256) as u8),
            2 if at < v.len() => {
                let end = (at + 1 + rng.below(16) as usize).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                v.splice(at..at, token.iter().copied());
            }
            4 => {
                let other = &seeds[rng.below(seeds.len() as u64) as usize];
                let from = rng.below(other.len() as u64 + 1) as usize;
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            5 if rng.below(20) == 0 => {
                // Long: a 60 KiB path component run.
                v.splice(at..at, std::iter::repeat_n(b'a', 60 * 1024));
            }
            _ => {
                if let Some(digit) = v.iter().position(|b| b.is_ascii_digit()) {
                    v[digit] = b'0' + rng.below(10) as u8;
                }
            }
        }
    }
    v
}

fn fuzz(target: &str, mut run: impl FnMut(&[u8])) {
    let seeds = seeds(target);
    for seed in &seeds {
        run(seed);
    }
    let mut rng = rng(target);
    let deadline = Instant::now() + budget();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let input = mutate(&mut rng, &seeds);
        run(&input);
        n += 1;
    }
    eprintln!("{target}: {} seeds, {n} mutations", seeds.len());
}

#[test]
fn control_protocol_survives_its_seeds_and_mutations() {
    let mut target = ControlTarget::new();
    fuzz("control", |input| target.run(input));
}

#[test]
fn crash_record_adoption_survives_its_seeds_and_mutations() {
    let mut target = CrashRecordTarget::new();
    fuzz("crash_record", |input| target.run(input));
}
