//! FNV-1a over bytes: a cheap fingerprint that notices a changed input set
//! (resumable runs and caches name their files with it). Not cryptographic.

/// A streaming FNV-1a (64-bit) hash.
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a {
    /// The empty hash.
    pub fn new() -> Self {
        Fnv1a(0xcbf29ce484222325)
    }

    /// Feeds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
        self
    }

    /// Feeds `text` and a terminating zero byte, so that the parts of a
    /// sequence cannot run into each other (`["ab", "c"]` and `["a", "bc"]`
    /// differ).
    pub fn write_part(&mut self, text: &str) -> &mut Self {
        self.write(text.as_bytes()).write(&[0])
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_part_boundaries() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(Fnv1a::new().finish(), 0xcbf29ce484222325);
        assert_eq!(Fnv1a::new().write(b"a").finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(Fnv1a::new().write(b"foobar").hex(), "85944171f73967e8");
        let ab_c = Fnv1a::new().write_part("ab").write_part("c").finish();
        let a_bc = Fnv1a::new().write_part("a").write_part("bc").finish();
        assert_ne!(ab_c, a_bc);
    }
}
