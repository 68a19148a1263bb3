//! A deterministic byte stream both ends can regenerate, so a test can check that what
//! arrived is exactly what was sent.
use sha2::{Digest, Sha256};

/// Seed of what `meshtb send` sends.
pub const CLIENT_SEED: u64 = 1;
/// Seed of what `meshtb sink` answers.
pub const SERVER_SEED: u64 = 2;

/// xorshift64*: cheap, and no two positions in a 10 MB stream repeat a short period.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// The SHA-256 (hex) of the first `len` bytes of the pattern with `seed`.
pub fn sha256_of(seed: u64, len: usize) -> String {
    let mut pattern = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        pattern.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n;
    }
    hex(&hasher.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
