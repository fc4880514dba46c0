//! What an import may add to a memory: the rows of the files it resumes,
//! never another file's silently (`--append` adds them after); a first
//! import that failed leaves nothing in the way of a corrected one; one
//! writer at a time.

use std::path::Path;

use ramem_store::memory::{
    import_npy, FloatDtype, ImportOptions, Memory, MemorySpec, MemoryWriter, MetadataEntry,
    ShardBatch, IMPORT_STATE_FILE,
};
use ramem_store::npy;

const DIM: usize = 6;

/// `n` rows of `dim` values from `seed`, none of them zero.
fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            0.1 + (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn write_keys(path: &Path, n: usize, seed: u64) -> Vec<f32> {
    let data = rows(n, DIM, seed);
    npy::write_f32_matrix(path, n, DIM, &data).unwrap();
    data
}

fn import(
    mem: &Path,
    keys: &Path,
    append: bool,
) -> ramem_store::Result<ramem_store::memory::ImportReport> {
    let options = ImportOptions {
        key_dtype: FloatDtype::F32,
        normalize_keys: false,
        append,
        ..ImportOptions::default()
    };
    import_npy(mem, keys, None, None, None, &options, 4)
}

fn keys_of(mem: &Path) -> Vec<f32> {
    let memory = Memory::open(mem).unwrap();
    (0..memory.count() as i64)
        .flat_map(|id| memory.key(id).unwrap())
        .collect()
}

#[test]
fn another_file_is_refused_unless_appended_and_never_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, mem) = (
        tmp.path().join("a.npy"),
        tmp.path().join("b.npy"),
        tmp.path().join("mem"),
    );
    let a_rows = write_keys(&a, 10, 1);
    let b_rows = write_keys(&b, 7, 2);
    let report = import(&mem, &a, false).unwrap();
    assert_eq!(
        (report.rows, report.first_row, report.imported),
        (10, 0, 10)
    );

    // B into A's memory: refused, saying what to do; A's rows stay alone.
    let err = import(&mem, &b, false).unwrap_err().to_string();
    for needle in [
        "already holds 10 rows",
        "a.npy",
        "b.npy",
        "--append",
        "new memory directory",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert_eq!(keys_of(&mem), a_rows);

    // The same file again: nothing to do.
    let again = import(&mem, &a, false).unwrap();
    assert_eq!((again.imported, again.skipped), (0, 10));
    assert_eq!(keys_of(&mem), a_rows);

    // With --append: A's rows, then B's.
    let appended = import(&mem, &b, true).unwrap();
    assert_eq!((appended.first_row, appended.imported), (10, 7));
    let mut both = a_rows.clone();
    both.extend(&b_rows);
    assert_eq!(keys_of(&mem), both);
    // Both imports are recorded, and a rerun of either changes nothing.
    let record = std::fs::read_to_string(mem.join(IMPORT_STATE_FILE)).unwrap();
    assert!(
        record.contains("a.npy") && record.contains("b.npy"),
        "{record}"
    );
    assert_eq!(import(&mem, &b, true).unwrap().imported, 0);
    assert_eq!(import(&mem, &a, false).unwrap().imported, 0);
    assert_eq!(keys_of(&mem), both);

    // A file changed since its import is another file.
    write_keys(&a, 10, 3);
    let err = import(&mem, &a, false).unwrap_err().to_string();
    assert!(err.contains("other files (or they changed since)"), "{err}");
}

#[test]
fn a_failed_first_import_leaves_nothing_in_the_way_of_a_corrected_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (bad, mem) = (tmp.path().join("bad.npy"), tmp.path().join("mem"));
    // A NaN in the first shard: nothing is committed.
    let mut data = rows(10, DIM, 4);
    data[DIM + 1] = f32::NAN;
    npy::write_f32_matrix(&bad, 10, DIM, &data).unwrap();
    let err = import(&mem, &bad, false).unwrap_err().to_string();
    assert!(err.contains("NaN"), "{err}");
    assert_eq!(Memory::open(&mem).unwrap().count(), 0);
    // The corrected file, here with another width too, imports.
    let fixed = tmp.path().join("fixed.npy");
    let wide = rows(10, DIM + 2, 5);
    npy::write_f32_matrix(&fixed, 10, DIM + 2, &wide).unwrap();
    let report = import(&mem, &fixed, false).unwrap();
    assert_eq!(report.imported, 10);
    let memory = Memory::open(&mem).unwrap();
    assert_eq!((memory.count(), memory.key_dim()), (10, DIM + 2));
}

#[test]
fn rows_no_import_recorded_take_an_append() {
    let tmp = tempfile::tempdir().unwrap();
    let (keys, mem) = (tmp.path().join("k.npy"), tmp.path().join("mem"));
    let new_rows = write_keys(&keys, 5, 6);
    // A memory written by something else (a build, a study): 3 rows.
    let mut writer = MemoryWriter::create(
        &mem,
        MemorySpec::new("unknown", DIM, FloatDtype::F32, false),
    )
    .unwrap();
    let first = rows(3, DIM, 7);
    writer
        .append_shard(ShardBatch {
            keys: &first,
            image_values: None,
            text_values: None,
            metadata: &[
                MetadataEntry::default(),
                MetadataEntry::default(),
                MetadataEntry::default(),
            ],
        })
        .unwrap();
    // One writer at a time: the import is refused while this writer lives.
    let err = import(&mem, &keys, true).unwrap_err().to_string();
    assert!(
        err.contains("being written by") && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(writer);
    let err = import(&mem, &keys, false).unwrap_err().to_string();
    assert!(
        err.contains("no import recorded") && err.contains("--append"),
        "{err}"
    );
    assert_eq!(import(&mem, &keys, true).unwrap().first_row, 3);
    let mut all = first.clone();
    all.extend(&new_rows);
    assert_eq!(keys_of(&mem), all);
}
