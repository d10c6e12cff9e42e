//! A deterministic "random" generator for tests and test vectors: the
//! BLAKE3 XOF of a seed. Production code takes any `CryptoRng` and is
//! given the operating system's.

use rand::{CryptoRng, RngCore};

/// Bytes of `BLAKE3-XOF(seed)`, in order.
pub(crate) struct FixedRng(blake3::OutputReader);

impl FixedRng {
    pub(crate) fn new(seed: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(seed);
        FixedRng(hasher.finalize_xof())
    }
}

impl RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.0.fill(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.0.fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

// Only ever used in tests.
impl CryptoRng for FixedRng {}

/// A one-generation key set of repository `"00aa"`, from `seed`.
pub(crate) fn test_keys(seed: &[u8], encryption: super::Encryption) -> super::RepositoryKeys {
    let payload = super::GenerationPayload::first(
        "00aa",
        encryption,
        chrono::DateTime::UNIX_EPOCH,
        &mut FixedRng::new(seed),
    );
    super::RepositoryKeys::from_generations([payload]).expect("one generation")
}
