//! Running fuzz targets' bodies on stable, bounded (`tests/fuzz_smoke.rs` of the module and of
//! the gateway): every file of a target's seed corpus, then generated inputs from a small
//! deterministic generator, so a failure repeats.

use std::path::Path;

/// SplitMix64: small, seedable, and the same everywhere.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Bytes mostly from `alphabet` (the words a target understands), some anything.
    pub fn input(&mut self, alphabet: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..(self.next_u64() % 16) {
            match self.next_u64() % 4 {
                0 => out.extend((0..self.next_u64() % 24).map(|_| self.next_u64() as u8)),
                _ => out.extend_from_slice(alphabet[(self.next_u64() % alphabet.len() as u64) as usize]),
            }
        }
        out
    }
}

/// Runs `body` on every file of `corpus` (which must hold some) and on `generated` inputs
/// made of `alphabet`.
pub fn run(corpus: &Path, body: fn(&[u8]), alphabet: &[&[u8]], generated: u64) {
    let mut files: Vec<_> = std::fs::read_dir(corpus)
        .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
        .map(|entry| entry.unwrap_or_else(|e| panic!("{}: {e}", corpus.display())).path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seed corpus in {}", corpus.display());
    for file in files {
        body(&std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
    }
    let mut generator = SplitMix(0x5EED ^ corpus.as_os_str().len() as u64);
    for _ in 0..generated {
        body(&generator.input(alphabet));
    }
}
