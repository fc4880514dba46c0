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

/// Bytes hashed at each sampled place of a file.
const SAMPLE_BLOCK: u64 = 64 << 10;
/// Places sampled between a file's first and last block.
const SAMPLE_PLACES: u64 = 16;

/// A fingerprint of a file's identity and content, cheap for any size: its
/// canonical path, length and modification time, and the bytes of its
/// first and last 64 KiB and of 16 evenly spaced 64 KiB blocks between.
/// Two different files (or one file changed since) differ in it; the same
/// unchanged file at the same path keeps it.
pub fn file_fingerprint(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let len = meta.len();
    let mut h = Fnv1a::new();
    let canonical = std::fs::canonicalize(path)?;
    h.write_part(&canonical.to_string_lossy());
    h.write(&len.to_le_bytes());
    if let Ok(modified) = meta.modified() {
        let since = modified
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.write(&since.as_nanos().to_le_bytes());
    }
    let mut offsets = vec![0u64];
    for i in 1..=SAMPLE_PLACES {
        offsets.push(len.saturating_sub(SAMPLE_BLOCK) * i / (SAMPLE_PLACES + 1));
    }
    offsets.push(len.saturating_sub(SAMPLE_BLOCK));
    let mut block = Vec::with_capacity(SAMPLE_BLOCK as usize);
    for offset in offsets {
        file.seek(SeekFrom::Start(offset))?;
        block.clear();
        (&mut file).take(SAMPLE_BLOCK).read_to_end(&mut block)?;
        h.write(&block);
    }
    Ok(h.hex())
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

    #[test]
    fn a_file_keeps_its_fingerprint_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, &bytes).unwrap();
        let first = file_fingerprint(&a).unwrap();
        assert_eq!(first, file_fingerprint(&a).unwrap());
        // Another file with the same bytes is another file.
        assert_ne!(first, file_fingerprint(&b).unwrap());
        // One byte changed near the end (in the last block).
        let mut changed = bytes.clone();
        changed[2_999_000] ^= 1;
        std::fs::write(&a, &changed).unwrap();
        assert_ne!(first, file_fingerprint(&a).unwrap());
    }
}
