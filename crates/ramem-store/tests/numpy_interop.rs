//! Files written by real NumPy are read correctly, and files written here
//! load in NumPy. Needs `python3` with NumPy; without them these tests fail
//! (with a message saying what to install) rather than pass unchecked.

use std::path::Path;
use std::process::Command;

use ramem_store::npy::{self, Dtype, NpyWriter};
use ramem_store::StoreError;

/// Runs a Python script with `dir` as its argument and returns its stdout.
fn python(script: &str, dir: &Path) -> String {
    let out = match Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run python3 ({e}); these tests need Python 3 with NumPy: \
             install python3, then `pip install numpy`"
        ),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'numpy'") {
        panic!("NumPy is not installed for python3; run `pip install numpy`");
    }
    assert!(out.status.success(), "python failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The values both sides compute: `(k - 3.5) / 7` in float32 for k = 0, 1, ...
fn values(n: usize) -> Vec<f32> {
    (0..n).map(|k| (k as f32 - 3.5) / 7.0).collect()
}

const WRITE_FIXTURES: &str = r#"
import sys, numpy as np
d = sys.argv[1]
a = ((np.arange(12, dtype=np.float32) - np.float32(3.5)) / np.float32(7)).reshape(3, 4)
np.save(d + '/f32.npy', a)
np.save(d + '/f16.npy', a.astype(np.float16))
np.save(d + '/i64.npy', np.array([[1, -2], [3, 2**40], [-(2**62), 0]], dtype=np.int64))
np.save(d + '/labels.npy', np.array([5, 3, 9, 0], dtype=np.int64))
np.save(d + '/empty.npy', np.zeros((0, 384), dtype=np.float32))
np.save(d + '/column_slice.npy', a[:, 1:3])   # np.save makes it contiguous
for v in [(1, 0), (2, 0), (3, 0)]:
    with open(d + '/v%d.npy' % v[0], 'wb') as f:
        np.lib.format.write_array(f, a, version=v)
np.save(d + '/fortran.npy', np.asfortranarray(a))
np.save(d + '/big_endian.npy', a.astype('>f4'))
np.save(d + '/f64.npy', a.astype(np.float64))
np.save(d + '/u8.npy', np.zeros((2, 2), dtype=np.uint8))
np.save(d + '/cube.npy', np.zeros((2, 2, 2), dtype=np.float32))
print(np.__version__)
"#;

#[test]
fn reads_files_written_by_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let version = python(WRITE_FIXTURES, dir.path());
    eprintln!("numpy {}", version.trim());
    let p = |name: &str| dir.path().join(name);
    let expected = values(12);

    let m = npy::read_f32_matrix(p("f32.npy")).unwrap();
    assert_eq!((m.rows, m.cols), (3, 4));
    assert_eq!(m.data, expected);

    let m = npy::read_f32_matrix(p("f16.npy")).unwrap();
    let halves: Vec<f32> = expected
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(m.data, halves);

    let m = npy::read_i64_matrix(p("i64.npy")).unwrap();
    assert_eq!((m.rows, m.cols), (3, 2));
    assert_eq!(m.data, vec![1, -2, 3, 1 << 40, -(1 << 62), 0]);

    let m = npy::read_i64_matrix(p("labels.npy")).unwrap();
    assert_eq!((m.rows, m.cols, m.data), (4, 1, vec![5, 3, 9, 0]));

    let m = npy::read_f32_matrix(p("empty.npy")).unwrap();
    assert_eq!((m.rows, m.cols), (0, 384));

    let m = npy::read_f32_matrix(p("column_slice.npy")).unwrap();
    let cols_1_2: Vec<f32> = (0..3)
        .flat_map(|r| [expected[r * 4 + 1], expected[r * 4 + 2]])
        .collect();
    assert_eq!(m.data, cols_1_2);

    for v in 1..=3u8 {
        let path = p(&format!("v{v}.npy"));
        assert_eq!(npy::read_header(&path).unwrap().version, (v, 0));
        assert_eq!(npy::read_f32_matrix(&path).unwrap().data, expected);
    }

    assert!(matches!(
        npy::read_f32_matrix(p("fortran.npy")),
        Err(StoreError::FortranOrder { .. })
    ));
    assert!(matches!(
        npy::read_f32_matrix(p("big_endian.npy")),
        Err(StoreError::BigEndian { .. })
    ));
    for name in ["f64.npy", "u8.npy"] {
        assert!(matches!(
            npy::read_f32_matrix(p(name)),
            Err(StoreError::UnsupportedDtype { .. })
        ));
    }
    assert!(matches!(
        npy::read_f32_matrix(p("cube.npy")),
        Err(StoreError::WrongNdim { .. })
    ));
}

const CHECK_OUR_FILES: &str = r#"
import sys, numpy as np
d = sys.argv[1]
a = ((np.arange(24, dtype=np.float32) - np.float32(3.5)) / np.float32(7)).reshape(6, 4)
def check(name, want):
    got = np.load(d + '/' + name)
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert np.array_equal(got, want), (name, got, want)
    assert got.flags['C_CONTIGUOUS']
check('f32.npy', a)
check('f16.npy', a.astype(np.float16))
check('i64.npy', np.array([[7, -8, 2**50]], dtype=np.int64))
check('streamed.npy', a)
check('streamed_f16.npy', a.astype(np.float16))
check('concat.npy', np.concatenate([a, a[:2]]))
check('empty.npy', np.zeros((0, 4), dtype=np.float32))
print('all ok')
"#;

#[test]
fn numpy_loads_files_written_here() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let a = values(24);
    npy::write_f32_matrix(p("f32.npy"), 6, 4, &a).unwrap();
    npy::write_f16_matrix(p("f16.npy"), 6, 4, &a).unwrap();
    npy::write_i64_matrix(p("i64.npy"), 1, 3, &[7, -8, 1 << 50]).unwrap();
    npy::write_f32_matrix(p("empty.npy"), 0, 4, &[]).unwrap();
    for (name, dtype) in [
        ("streamed.npy", Dtype::F32),
        ("streamed_f16.npy", Dtype::F16),
    ] {
        let mut w = NpyWriter::create(p(name), dtype, 4).unwrap();
        for rows in a.chunks(8) {
            w.append_rows(rows).unwrap();
        }
        w.finish().unwrap();
    }
    npy::write_f32_matrix(p("head.npy"), 2, 4, &a[..8]).unwrap();
    npy::concat_f32_files(&[p("f32.npy"), p("head.npy")], p("concat.npy")).unwrap();
    assert_eq!(python(CHECK_OUR_FILES, dir.path()).trim(), "all ok");
}

/// A memory imported from NumPy-written inputs reads back in plain NumPy and
/// JSON, as docs/FORMAT.md says it can.
#[test]
fn memory_imported_from_numpy_reads_in_numpy() {
    use ramem_store::memory::{import_npy, FloatDtype, ImportOptions, Memory, ValueKind};

    let dir = tempfile::tempdir().unwrap();
    python(
        r#"
import sys, json, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(0)
np.save(f"{d}/keys.npy", rng.standard_normal((50, 16)).astype(np.float32))
np.save(f"{d}/image.npy", rng.standard_normal((50, 7)).astype(np.float16))
with open(f"{d}/meta.jsonl", "w", encoding="utf-8") as f:
    for i in range(50):
        f.write(json.dumps({"source": f"s3://bucket/{i}.jpg", "caption": f"ein Bild {i} \u00e9\n"}) + "\n")
"#,
        dir.path(),
    );
    let mem = dir.path().join("mem");
    let options = ImportOptions {
        key_dtype: FloatDtype::F32,
        normalize_keys: false,
        value_dtype: FloatDtype::F16,
        ..ImportOptions::default()
    };
    let d = dir.path();
    import_npy(
        &mem,
        &d.join("keys.npy"),
        Some(&d.join("image.npy")),
        None,
        Some(&d.join("meta.jsonl")),
        &options,
        16,
    )
    .unwrap();
    let memory = Memory::open(&mem).unwrap();
    assert_eq!(memory.count(), 50);
    assert_eq!(memory.value_dim(ValueKind::Image), Some(7));

    let out = python(
        r#"
import sys, json, numpy as np
d = sys.argv[1]
m = json.load(open(f"{d}/mem/manifest.json"))
assert m["format"] == "ramem-memory" and m["version"] == 1 and m["count"] == 50, m
assert [s["count"] for s in m["shards"]] == [16, 16, 16, 2], m["shards"]
keys = np.concatenate([np.load(f"{d}/mem/{s['name']}/keys.npy", mmap_mode="r") for s in m["shards"]])
img = np.concatenate([np.load(f"{d}/mem/{s['name']}/image_values.npy", mmap_mode="r") for s in m["shards"]])
assert keys.dtype == np.float32 and img.dtype == np.float16, (keys.dtype, img.dtype)
assert np.array_equal(keys, np.load(f"{d}/keys.npy"))
assert np.array_equal(img, np.load(f"{d}/image.npy"))
rows = [json.loads(l) for s in m["shards"] for l in open(f"{d}/mem/{s['name']}/metadata.jsonl", encoding="utf-8")]
assert [r["id"] for r in rows] == list(range(50))
assert rows[49] == {"id": 49, "source": "s3://bucket/49.jpg", "caption": "ein Bild 49 \u00e9\n"}, rows[49]
print("ok")
"#,
        dir.path(),
    );
    assert_eq!(out.trim(), "ok");
    let meta = memory.metadata(49).unwrap();
    assert_eq!(meta.caption.as_deref(), Some("ein Bild 49 \u{e9}\n"));
}
