//! Deduplicating a memory against a test set: exact and near copies of test
//! rows are found (and only they), agreeing with a brute-force cosine check;
//! the copy without them keeps every other row, in order, with its values
//! and metadata.

use std::path::Path;

use ramem_index::{copy_memory_without, find_near_duplicates, DedupError};
use ramem_store::memory::{
    FloatDtype, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, ValueKind, ValueSpec,
};

const DIM: usize = 32;
const IMAGE_DIM: usize = 6;
const TEXT_DIM: usize = 4;
const SHARDS: [usize; 3] = [10, 15, 9];

fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    d / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

/// A vector with cosine similarity `c` to `t`, in a direction set by `seed`.
fn at_cosine(t: &[f32], c: f32, seed: u64) -> Vec<f32> {
    let t = unit(t);
    let r = rows(1, t.len(), seed);
    let along: f32 = r.iter().zip(&t).map(|(x, y)| x * y).sum();
    let u = unit(
        &r.iter()
            .zip(&t)
            .map(|(x, y)| x - along * y)
            .collect::<Vec<_>>(),
    );
    let s = (1.0 - c * c).sqrt();
    t.iter().zip(&u).map(|(x, y)| c * x + s * y).collect()
}

struct Fixture {
    test: Vec<f32>,
    keys: Vec<f32>,
    image: Vec<f32>,
    text: Vec<f32>,
}

/// Test set of 12 rows; a memory of 34 rows in shards of 10, 15 and 9 with
/// an exact copy of test row 0 (scaled) at id 3, a cosine-0.99 copy of test
/// row 1 at id 17, a cosine-0.9 copy of test row 2 at id 20 and a
/// cosine-0.99 copy of test row 11 at id 33 (the last row).
fn build(dir: &Path, key_dtype: FloatDtype, normalize: bool) -> Fixture {
    let test = rows(12, DIM, 1);
    let n: usize = SHARDS.iter().sum();
    let mut keys = rows(n, DIM, 2);
    let mut put = |id: usize, v: Vec<f32>| keys[id * DIM..(id + 1) * DIM].copy_from_slice(&v);
    put(3, test[..DIM].iter().map(|v| v * 2.5).collect());
    put(17, at_cosine(&test[DIM..2 * DIM], 0.99, 5));
    put(20, at_cosine(&test[2 * DIM..3 * DIM], 0.9, 6));
    put(33, at_cosine(&test[11 * DIM..12 * DIM], 0.99, 7));
    let image = rows(n, IMAGE_DIM, 3);
    let text = rows(n, TEXT_DIM, 4);
    let mut spec = MemorySpec::new("enc", DIM, key_dtype, normalize);
    spec.image = Some(ValueSpec {
        encoder: "img".into(),
        dim: IMAGE_DIM,
        dtype: FloatDtype::F32,
    });
    spec.text = Some(ValueSpec {
        encoder: "txt".into(),
        dim: TEXT_DIM,
        dtype: FloatDtype::F16,
    });
    let mut writer = MemoryWriter::create(dir, spec).unwrap();
    let mut start = 0;
    for len in SHARDS {
        let metadata: Vec<MetadataEntry> = (start..start + len)
            .map(|i| MetadataEntry {
                source: Some(format!("img/{i}.jpg")),
                caption: (i % 2 == 0).then(|| format!("caption {i}\nline two")),
                label: None,
            })
            .collect();
        writer
            .append_shard(ShardBatch {
                keys: &keys[start * DIM..(start + len) * DIM],
                image_values: Some(&image[start * IMAGE_DIM..(start + len) * IMAGE_DIM]),
                text_values: Some(&text[start * TEXT_DIM..(start + len) * TEXT_DIM]),
                metadata: &metadata,
            })
            .unwrap();
        start += len;
    }
    Fixture {
        test,
        keys,
        image,
        text,
    }
}

/// Ids whose best cosine against the test set is >= threshold, by brute force.
fn brute_force(f: &Fixture, threshold: f32) -> Vec<i64> {
    f.keys
        .chunks_exact(DIM)
        .enumerate()
        .filter(|(_, k)| f.test.chunks_exact(DIM).any(|t| cosine(k, t) >= threshold))
        .map(|(i, _)| i as i64)
        .collect()
}

#[test]
fn exact_and_near_copies_are_found_and_unrelated_rows_are_not() {
    for (dtype, normalize) in [(FloatDtype::F16, true), (FloatDtype::F32, false)] {
        let dir = tempfile::tempdir().unwrap();
        let f = build(dir.path(), dtype, normalize);
        let memory = Memory::open(dir.path()).unwrap();
        let found = find_near_duplicates(&memory, &f.test, DIM, 0.95).unwrap();
        assert_eq!(found, vec![3, 17, 33], "{dtype:?}");
        let found = find_near_duplicates(&memory, &f.test, DIM, 0.85).unwrap();
        assert_eq!(found, vec![3, 17, 20, 33], "{dtype:?}");
        // Few test rows take the streaming kernels, many the matrix product:
        // both give the same answer.
        let few = find_near_duplicates(&memory, &f.test[..2 * DIM], DIM, 0.95).unwrap();
        assert_eq!(few, vec![3, 17]);
        // Test rows need not be unit length.
        let scaled: Vec<f32> = f.test.iter().map(|v| v * 7.0).collect();
        assert_eq!(
            find_near_duplicates(&memory, &scaled, DIM, 0.95).unwrap(),
            vec![3, 17, 33]
        );
        // No test rows: nothing is a duplicate.
        assert!(find_near_duplicates(&memory, &[], DIM, 0.5)
            .unwrap()
            .is_empty());
    }
}

#[test]
fn agrees_with_brute_force_cosine_at_many_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let f = build(dir.path(), FloatDtype::F32, true);
    let memory = Memory::open(dir.path()).unwrap();
    for threshold in [-0.5, 0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 0.95, 1.0] {
        let want = brute_force(&f, threshold);
        let got = find_near_duplicates(&memory, &f.test, DIM, threshold).unwrap();
        // Only rows whose best score is within rounding of the threshold may differ.
        let best = |id: i64| {
            f.test
                .chunks_exact(DIM)
                .map(|t| cosine(&f.keys[id as usize * DIM..(id as usize + 1) * DIM], t))
                .fold(f32::NEG_INFINITY, f32::max)
        };
        for id in want.iter().filter(|id| !got.contains(id)) {
            assert!(
                (best(*id) - threshold).abs() < 1e-5,
                "missed {id} at {threshold}"
            );
        }
        for id in got.iter().filter(|id| !want.contains(id)) {
            assert!(
                (best(*id) - threshold).abs() < 1e-5,
                "extra {id} at {threshold}"
            );
        }
    }
}

#[test]
fn copy_without_duplicates_keeps_other_rows_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let f = build(dir.path(), FloatDtype::F16, true);
    let memory = Memory::open(dir.path()).unwrap();
    let dropped = find_near_duplicates(&memory, &f.test, DIM, 0.95).unwrap();
    let out = dir.path().join("deduped");
    let report = copy_memory_without(&memory, &dropped, &out).unwrap();
    assert_eq!(
        (report.source_rows, report.kept, report.dropped),
        (34, 31, 3)
    );
    assert_eq!(report.shards, 3);

    let copy = Memory::open(&out).unwrap();
    assert_eq!(copy.count(), 31);
    assert_eq!(copy.manifest().key, memory.manifest().key);
    assert_eq!(copy.manifest().values, memory.manifest().values);
    let shard_counts: Vec<u64> = copy.manifest().shards.iter().map(|s| s.count).collect();
    assert_eq!(shard_counts, vec![9, 14, 8]);
    let kept: Vec<i64> = (0..34).filter(|id| !dropped.contains(id)).collect();
    for (new, &old) in kept.iter().enumerate() {
        let new = new as i64;
        let (a, b) = (copy.key(new).unwrap(), memory.key(old).unwrap());
        // Re-normalising an f16 unit key may move it by one unit in the last place.
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-3, "key of row {old}: {x} vs {y}");
        }
        for kind in [ValueKind::Image, ValueKind::Text] {
            assert_eq!(
                copy.values(kind, new).unwrap(),
                memory.values(kind, old).unwrap()
            );
        }
        let (ma, mb) = (copy.metadata(new).unwrap(), memory.metadata(old).unwrap());
        assert_eq!(ma.id, new);
        assert_eq!((ma.source, ma.caption), (mb.source, mb.caption));
        assert_eq!(
            copy.values(ValueKind::Image, new).unwrap(),
            f.image[old as usize * IMAGE_DIM..(old as usize + 1) * IMAGE_DIM]
        );
    }
    assert!(f.text.len() == 34 * TEXT_DIM);

    // A shard that loses every row is skipped, not written empty.
    let out2 = dir.path().join("no-first-shard");
    let report = copy_memory_without(&memory, &(0..10).collect::<Vec<_>>(), &out2).unwrap();
    assert_eq!((report.kept, report.shards), (24, 2));
    assert_eq!(
        Memory::open(&out2)
            .unwrap()
            .metadata(0)
            .unwrap()
            .source
            .as_deref(),
        Some("img/10.jpg")
    );
}

#[test]
fn bad_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = build(dir.path(), FloatDtype::F16, true);
    let memory = Memory::open(dir.path()).unwrap();
    for t in [-1.0, 1.5, f32::NAN, -2.0] {
        assert!(matches!(
            find_near_duplicates(&memory, &f.test, DIM, t),
            Err(DedupError::Threshold(_))
        ));
    }
    assert!(matches!(
        find_near_duplicates(&memory, &f.test[..DIM - 1], DIM - 1, 0.9),
        Err(DedupError::DimMismatch {
            memory: 32,
            test: 31
        })
    ));
    assert!(matches!(
        find_near_duplicates(&memory, &f.test[..DIM + 1], DIM, 0.9),
        Err(DedupError::RaggedTest { .. })
    ));
    let mut zero = f.test.clone();
    zero[DIM..2 * DIM].fill(0.0);
    assert!(matches!(
        find_near_duplicates(&memory, &zero, DIM, 0.9),
        Err(DedupError::ZeroTest { row: 1 })
    ));
    let mut nan = f.test.clone();
    nan[5] = f32::NAN;
    assert!(matches!(
        find_near_duplicates(&memory, &nan, DIM, 0.9),
        Err(DedupError::NonFiniteTest { row: 0 })
    ));
    assert!(matches!(
        copy_memory_without(&memory, &[34], &dir.path().join("x")),
        Err(DedupError::UnknownRow { id: 34, count: 34 })
    ));
    assert!(matches!(
        copy_memory_without(&memory, &(0..34).collect::<Vec<_>>(), &dir.path().join("y")),
        Err(DedupError::NothingKept(34))
    ));
    // The source memory's own directory is not empty: refused by the writer.
    assert!(matches!(
        copy_memory_without(&memory, &[0], dir.path()),
        Err(DedupError::Store(_))
    ));
}
