//! Property tests of the readers that take files from outside: the `.npy`
//! reader and the manifest reader get arbitrary bytes, and mutations of
//! valid files (bytes flipped, cut, spliced), and must answer with a value
//! or an error, never a panic. Bounded so that the whole file runs in a few
//! tens of seconds; `PROPTEST_CASES` raises the count for a longer hunt.

use std::path::Path;

use proptest::prelude::*;
use ramem_store::memory::{
    FloatDtype, Manifest, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch,
};
use ramem_store::npy;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A valid little `.npy` of `rows x cols` floats, as bytes.
fn valid_npy(rows: usize, cols: usize, f16: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let data: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.25 - 3.0).collect();
    if f16 {
        npy::write_f16_matrix(&path, rows, cols, &data).unwrap();
    } else {
        npy::write_f32_matrix(&path, rows, cols, &data).unwrap();
    }
    std::fs::read(&path).unwrap()
}

/// Every reader of a `.npy` path, on `bytes`: each returns, none panics.
fn read_all_ways(dir: &Path, bytes: &[u8]) {
    let path = dir.join("fuzz.npy");
    std::fs::write(&path, bytes).unwrap();
    let _ = npy::read_header(&path);
    let _ = npy::read_f32_matrix(&path);
    let _ = npy::read_i64_matrix(&path);
    let _ = npy::read_f32_array(&path);
    if let Ok(mut reader) = npy::NpyRowReader::open(&path) {
        let mut out = Vec::new();
        let rows = reader.rows();
        let _ = reader.read_rows(0, rows.min(4), &mut out);
        let _ = reader.read_rows(rows.saturating_sub(1), 1, &mut out);
    }
}

/// A mutation of `base`: flip bytes, cut it, or splice random bytes in.
fn mutate(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    (
        prop::collection::vec((0..len.max(1), any::<u8>()), 0..8),
        0..=len,
        prop::collection::vec(any::<u8>(), 0..16),
        0..3u8,
    )
        .prop_map(move |(flips, cut, splice, how)| {
            let mut bytes = base.clone();
            for (at, value) in flips {
                if at < bytes.len() {
                    bytes[at] = value;
                }
            }
            match how {
                0 => bytes.truncate(cut),
                1 => {
                    let at = cut.min(bytes.len());
                    bytes.splice(at..at, splice);
                }
                _ => {}
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(10000), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_npy_reader_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        read_all_ways(dir.path(), &bytes);
    }

    #[test]
    fn the_npy_reader_never_panics_on_damaged_files(
        bytes in (1..6usize, 1..6usize, any::<bool>())
            .prop_flat_map(|(rows, cols, f16)| mutate(valid_npy(rows, cols, f16)))
    ) {
        let dir = tempfile::tempdir().unwrap();
        read_all_ways(dir.path(), &bytes);
    }
}

/// The manifest of a valid one-shard memory, and the memory's directory.
fn valid_memory(dir: &Path) -> Vec<u8> {
    let spec = MemorySpec::new("fuzz", 3, FloatDtype::F16, true);
    let mut writer = MemoryWriter::create(dir, spec).unwrap();
    writer
        .append_shard(ShardBatch {
            keys: &[1.0, 0.0, 0.0, 0.0, 2.0, 0.0],
            image_values: None,
            text_values: None,
            metadata: &[MetadataEntry::source("a"), MetadataEntry::default()],
        })
        .unwrap();
    std::fs::read(dir.join("manifest.json")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(4000), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_manifest_reader_never_panics_on_damaged_manifests(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        how in 0..3u8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("mem");
        let mut manifest = valid_memory(&mem);
        for (at, value) in flips {
            let i = at.index(manifest.len());
            manifest[i] = value;
        }
        match how {
            0 => manifest.truncate(cut.index(manifest.len() + 1)),
            1 => {
                // Numbers in the manifest replaced by large or negative ones.
                let text = String::from_utf8_lossy(&manifest)
                    .replace("\"count\": 2", "\"count\": 18446744073709551615")
                    .replace("\"dim\": 3", "\"dim\": 0");
                manifest = text.into_bytes();
            }
            _ => {}
        }
        std::fs::write(mem.join("manifest.json"), &manifest).unwrap();
        let _ = Manifest::read(&mem);
        if let Ok(memory) = Memory::open(&mem) {
            for id in 0..memory.count().min(4) as i64 {
                let _ = memory.key(id);
                let _ = memory.metadata(id);
            }
        }
        let _ = MemoryWriter::open_append(&mem);
    }

    #[test]
    fn the_manifest_reader_never_panics_on_arbitrary_text(text in ".{0,300}") {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), text.as_bytes()).unwrap();
        let _ = Manifest::read(dir.path());
        let _ = Memory::open(dir.path());
    }
}
