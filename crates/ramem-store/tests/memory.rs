//! The memory directory: round trips, crash safety, every error case, scale.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ramem_store::memory::{
    import_npy, import_npy_with_progress, FloatDtype, ImportOptions, ImportSources, KeysData,
    Manifest, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, ValueKind, ValueSpec,
};
use ramem_store::npy::{self, Dtype, NpyWriter};

/// A small deterministic generator (xorshift64*), so tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // Uniform in [-1, 1).
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
}

fn normalized(rows: &[f32], dim: usize) -> Vec<f32> {
    let mut out = rows.to_vec();
    for row in out.chunks_exact_mut(dim) {
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        row.iter_mut()
            .for_each(|v| *v = (f64::from(*v) / norm) as f32);
    }
    out
}

/// Equal within f16 precision (relative 2^-10, absolute near zero).
fn assert_close_f16(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = w.abs() * 1.0 / 1024.0 + 1e-6;
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

fn spec(key_dtype: FloatDtype, normalize: bool) -> MemorySpec {
    MemorySpec {
        image: Some(ValueSpec {
            encoder: "efficientnet-lite0".into(),
            dim: 5,
            dtype: FloatDtype::F32,
        }),
        text: Some(ValueSpec {
            encoder: "minilm-l6".into(),
            dim: 3,
            dtype: FloatDtype::F16,
        }),
        ..MemorySpec::new("efficientnet-lite0", 6, key_dtype, normalize)
    }
}

struct Written {
    keys: Vec<f32>,
    image: Vec<f32>,
    text: Vec<f32>,
    meta: Vec<MetadataEntry>,
}

fn write_shards(writer: &mut MemoryWriter, sizes: &[usize], rng: &mut Rng, all: &mut Written) {
    for &n in sizes {
        let keys = rng.vec(n * 6);
        let image = rng.vec(n * 5);
        let text = rng.vec(n * 3);
        let base = all.meta.len();
        let meta: Vec<MetadataEntry> = (0..n)
            .map(|i| MetadataEntry {
                source: Some(format!("photos/{}.jpg", base + i)),
                caption: (i % 2 == 0).then(|| format!("a \"quoted\" caption, ünïcode {i}\nline")),
                label: None,
            })
            .collect();
        let info = writer
            .append_shard(ShardBatch {
                keys: &keys,
                image_values: Some(&image),
                text_values: Some(&text),
                metadata: &meta,
            })
            .unwrap();
        assert_eq!(info.first_id, base as u64);
        assert_eq!(info.count, n as u64);
        all.keys.extend(keys);
        all.image.extend(image);
        all.text.extend(text);
        all.meta.extend(meta);
    }
}

fn check_contents(memory: &Memory, all: &Written, key_dtype: FloatDtype, normalize: bool) {
    let n = all.meta.len();
    assert_eq!(memory.count(), n as u64);
    assert_eq!(memory.key_dim(), 6);
    assert_eq!(memory.key_dtype(), key_dtype);
    let want_keys = if normalize {
        normalized(&all.keys, 6)
    } else {
        all.keys.clone()
    };
    // Keys through the borrowed shard views; ids global and contiguous.
    let mut next_id = 0i64;
    for s in 0..memory.shard_count() {
        let view = memory.shard_keys(s);
        assert_eq!(view.first_id, next_id);
        assert_eq!(view.dim, 6);
        let got: Vec<f32> = match view.data {
            KeysData::F16(d) => {
                assert_eq!(key_dtype, FloatDtype::F16);
                d.iter().map(|v| v.to_f32()).collect()
            }
            KeysData::F32(d) => {
                assert_eq!(key_dtype, FloatDtype::F32);
                d.to_vec()
            }
        };
        assert_eq!(got.len(), view.rows * 6);
        let want = &want_keys[next_id as usize * 6..(next_id as usize + view.rows) * 6];
        match key_dtype {
            FloatDtype::F32 => assert_eq!(got, want),
            FloatDtype::F16 => assert_close_f16(&got, want, "shard keys"),
        }
        next_id += view.rows as i64;
    }
    assert_eq!(next_id as usize, n);
    for row in 0..n {
        let id = row as i64;
        let key = memory.key(id).unwrap();
        let want = &want_keys[row * 6..(row + 1) * 6];
        match key_dtype {
            FloatDtype::F32 => assert_eq!(key, want),
            FloatDtype::F16 => assert_close_f16(&key, want, "key"),
        }
        // Image values are f32: exact. Text values are f16: within precision.
        assert_eq!(
            memory.values(ValueKind::Image, id).unwrap(),
            &all.image[row * 5..(row + 1) * 5]
        );
        assert_close_f16(
            &memory.values(ValueKind::Text, id).unwrap(),
            &all.text[row * 3..(row + 1) * 3],
            "text value",
        );
        let meta = memory.metadata(id).unwrap();
        assert_eq!(meta.id, id);
        assert_eq!(meta.source, all.meta[row].source);
        assert_eq!(meta.caption, all.meta[row].caption);
    }
    // Gathering in any order.
    let rows: Vec<i64> = (0..n as i64).rev().step_by(2).collect();
    let gathered = memory.gather_values(ValueKind::Image, &rows).unwrap();
    for (k, &r) in rows.iter().enumerate() {
        let r = r as usize;
        assert_eq!(
            &gathered[k * 5..(k + 1) * 5],
            &all.image[r * 5..(r + 1) * 5]
        );
    }
    // A gather large enough to run on several threads (ids repeated, out
    // of order) matches row by row.
    let many: Vec<i64> = (0..600).map(|i| (i * 7 % n) as i64).collect();
    let keys = memory.gather_keys(&many).unwrap();
    let text = memory.gather_values(ValueKind::Text, &many).unwrap();
    for (k, &r) in many.iter().enumerate() {
        assert_eq!(&keys[k * 6..(k + 1) * 6], &memory.key(r).unwrap()[..]);
        assert_eq!(
            &text[k * 3..(k + 1) * 3],
            &memory.values(ValueKind::Text, r).unwrap()[..]
        );
    }
    let err = memory.key(n as i64).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
    let err = memory.gather_keys(&[0, -3]).unwrap_err().to_string();
    assert!(err.contains("row -3 is out of range"), "{err}");
    assert!(memory.metadata(-1).is_err());
}

#[test]
fn memory_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Memory>();
}

#[test]
fn round_trip_three_shards_f16_and_f32() {
    for (key_dtype, normalize) in [(FloatDtype::F32, false), (FloatDtype::F16, true)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mem");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut all = Written {
            keys: vec![],
            image: vec![],
            text: vec![],
            meta: vec![],
        };
        let mut writer = MemoryWriter::create(&dir, spec(key_dtype, normalize)).unwrap();
        write_shards(&mut writer, &[4, 1, 7], &mut rng, &mut all);
        drop(writer);

        let memory = Memory::open(&dir).unwrap();
        assert_eq!(memory.shard_count(), 3);
        check_contents(&memory, &all, key_dtype, normalize);

        // Append after reopening: ids continue where they stopped.
        let mut writer = MemoryWriter::open_append(&dir).unwrap();
        write_shards(&mut writer, &[3], &mut rng, &mut all);
        let memory = Memory::open(&dir).unwrap();
        assert_eq!(memory.shard_count(), 4);
        check_contents(&memory, &all, key_dtype, normalize);

        // The stored files are plain .npy matrices of the declared dtype.
        let h = npy::read_header(dir.join("shard-000001/keys.npy")).unwrap();
        assert_eq!(h.dtype, key_dtype.npy());
        assert_eq!(h.shape, vec![1, 6]);
        let m = Manifest::read(&dir).unwrap();
        assert_eq!(m.count, 15);
        assert_eq!(m.shards[3].first_id, 12);
        assert_eq!(m.key.normalized, normalize);
    }
}

// ---------------------------------------------------------------------------
// Import and crash safety

const DIM: usize = 8;
const CHILD_ENV: &str = "RAMEM_TEST_CRASH_CHILD";

struct Inputs {
    keys: PathBuf,
    image: PathBuf,
    meta: PathBuf,
    rows: usize,
}

fn make_inputs(dir: &Path, rows: usize) -> Inputs {
    let mut rng = Rng(42);
    let keys = dir.join("keys.npy");
    let image = dir.join("image.npy");
    let meta = dir.join("meta.jsonl");
    npy::write_f32_matrix(&keys, rows, DIM, &rng.vec(rows * DIM)).unwrap();
    npy::write_f16_matrix(&image, rows, 4, &rng.vec(rows * 4)).unwrap();
    let mut text = String::new();
    for i in 0..rows {
        text.push_str(&format!(
            "{{\"source\": \"https://example.org/{i}.png\", \"caption\": \"picture {i}\"}}\n"
        ));
    }
    fs::write(&meta, text).unwrap();
    Inputs {
        keys,
        image,
        meta,
        rows,
    }
}

fn import(mem: &Path, inputs: &Inputs, shard_rows: usize) -> ramem_store::Result<()> {
    import_npy(
        mem,
        &inputs.keys,
        Some(&inputs.image),
        None,
        Some(&inputs.meta),
        &ImportOptions {
            key_encoder: "test-encoder".into(),
            image_encoder: "test-encoder".into(),
            ..ImportOptions::default()
        },
        shard_rows,
    )
    .map(|_| ())
}

/// Every file under `dir` (relative path, bytes), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Not a test on its own: the body the crash test runs in a child process
/// (this same test binary, selected by name, with `CHILD_ENV` set).
#[test]
fn crash_child_writer() {
    let Ok(work) = std::env::var(CHILD_ENV) else {
        return;
    };
    let work = PathBuf::from(work);
    let inputs = Inputs {
        keys: work.join("keys.npy"),
        image: work.join("image.npy"),
        meta: work.join("meta.jsonl"),
        rows: 0,
    };
    // Writes shards in a loop until killed (the parent kills it long
    // before the import could finish).
    import(&work.join("mem"), &inputs, 5).unwrap();
}

#[test]
fn killed_import_resumes_to_the_same_content() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let inputs = make_inputs(work, 1_000);
    let mem = work.join("mem");

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, work)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a few shards are committed, while it is writing the
    // files of the next one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = Manifest::read(&mem) {
            let writing = fs::read_dir(&mem).unwrap().any(|e| {
                let e = e.unwrap();
                e.file_name().to_string_lossy().starts_with(".tmp-shard-")
                    && e.path().join("keys.npy").exists()
            });
            if m.shards.len() >= 7 && writing {
                break;
            }
        }
        assert!(Instant::now() < deadline, "child made no progress");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());

    // Every committed shard reads back; whatever was in progress is ignored.
    let committed = Manifest::read(&mem).unwrap();
    let leftovers: Vec<String> = fs::read_dir(&mem)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json" && !committed.shards.iter().any(|s| &s.name == n))
        .collect();
    eprintln!(
        "killed after {} committed rows; left behind: {leftovers:?}",
        committed.count
    );
    assert!(committed.count >= 35);
    assert!(
        (committed.count as usize) < inputs.rows,
        "the child finished before it was killed; the test did not test a crash"
    );
    let memory = Memory::open(&mem).unwrap();
    let source = npy::read_f32_matrix(&inputs.keys).unwrap();
    for row in 0..committed.count as usize {
        let want = normalized(source.row(row), DIM);
        assert_close_f16(&memory.key(row as i64).unwrap(), &want, "committed key");
        let meta = memory.metadata(row as i64).unwrap();
        assert_eq!(meta.caption, Some(format!("picture {row}")));
    }
    drop(memory);
    // Leftovers of the kinds a killed writer leaves, whether or not this
    // kill happened to produce them.
    fs::create_dir_all(mem.join(".tmp-shard-009999-1")).unwrap();
    fs::write(mem.join(".tmp-shard-009999-1/keys.npy"), b"partial").unwrap();
    fs::create_dir_all(mem.join("shard-009998")).unwrap();
    fs::write(mem.join(".manifest.json.1.7.tmp"), b"{").unwrap();
    assert_eq!(Memory::open(&mem).unwrap().count(), committed.count);

    // Resume, and compare with an import that was never interrupted.
    let t = Instant::now();
    import(&mem, &inputs, 5).unwrap();
    let reference = work.join("reference");
    import(&reference, &inputs, 5).unwrap();
    eprintln!(
        "resume and reference imports: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (got, want) = (tree(&mem), tree(&reference));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    assert!(
        got == want,
        "resumed memory differs from an uninterrupted import"
    );
    assert_eq!(Memory::open(&mem).unwrap().count(), inputs.rows as u64);

    // Rerunning a complete import is a no-op.
    import(&mem, &inputs, 5).unwrap();
    assert!(tree(&mem) == want);
}

#[test]
fn import_values_keys_and_text_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = make_inputs(tmp.path(), 23);
    let sources = tmp.path().join("sources.txt");
    let text: String = (0..23).map(|i| format!("img/{i}.jpg\r\n")).collect();
    fs::write(&sources, text).unwrap();
    let texts = tmp.path().join("text.npy");
    let text_values = Rng(7).vec(23 * 3);
    npy::write_f32_matrix(&texts, 23, 3, &text_values).unwrap();
    let mem = tmp.path().join("mem");
    let mut seen = Vec::new();
    let report = import_npy_with_progress(
        &mem,
        &ImportSources {
            keys: &inputs.keys,
            image_values: Some(&inputs.image),
            text_values: Some(&texts),
            metadata: Some(&sources),
            labels: None,
            label_names: None,
        },
        &ImportOptions {
            key_dtype: FloatDtype::F32,
            normalize_keys: false,
            ..ImportOptions::default()
        },
        10,
        &mut |p| seen.push((p.committed, p.total, p.skipped)),
    )
    .unwrap();
    assert_eq!(seen, [(0, 23, 0), (10, 23, 0), (20, 23, 0), (23, 23, 0)]);
    assert_eq!((report.rows, report.skipped, report.imported), (23, 0, 23));
    assert_eq!(report.shards_written, 3);
    let memory = Memory::open(&mem).unwrap();
    let keys = npy::read_f32_matrix(&inputs.keys).unwrap();
    let image = npy::read_f32_matrix(&inputs.image).unwrap();
    for row in 0..23 {
        assert_eq!(memory.key(row as i64).unwrap(), keys.row(row));
        assert_eq!(
            memory.values(ValueKind::Image, row as i64).unwrap(),
            image.row(row)
        );
        assert_eq!(
            memory.values(ValueKind::Text, row as i64).unwrap(),
            &text_values[row * 3..row * 3 + 3]
        );
        let meta = memory.metadata(row as i64).unwrap();
        assert_eq!(
            meta.source.as_deref(),
            Some(format!("img/{row}.jpg").as_str())
        );
        assert_eq!(meta.caption, None);
    }
    assert_eq!(memory.shard_keys(2).rows, 3);
}

// ---------------------------------------------------------------------------
// Errors: each names the file concerned.

fn small_memory(dir: &Path) {
    let mut rng = Rng(3);
    let mut all = Written {
        keys: vec![],
        image: vec![],
        text: vec![],
        meta: vec![],
    };
    let mut w = MemoryWriter::create(dir, spec(FloatDtype::F16, true)).unwrap();
    write_shards(&mut w, &[3, 2], &mut rng, &mut all);
}

fn open_err(dir: &Path) -> String {
    Memory::open(dir).unwrap_err().to_string()
}

fn assert_has(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

#[test]
fn newer_manifest_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    small_memory(&dir);
    let path = dir.join("manifest.json");
    let text = fs::read_to_string(&path).unwrap();
    let newer = text.replace("\"version\": 1,", "\"version\": 3,");
    assert_ne!(text, newer);
    // A newer version may also add fields this version does not know.
    fs::write(
        &path,
        newer.replace("\"count\"", "\"future\": [1], \"count\""),
    )
    .unwrap();
    let err = open_err(&dir);
    assert_has(&err, &["manifest.json", "version 3", "up to 2", "newer"]);
    let err = MemoryWriter::open_append(&dir).unwrap_err().to_string();
    assert_has(&err, &["manifest.json", "version 3"]);
}

#[test]
fn truncated_keys_file_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    small_memory(&dir);
    let keys = dir.join("shard-000001/keys.npy");
    let len = fs::metadata(&keys).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&keys).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    assert_has(&open_err(&dir), &["shard-000001/keys.npy", "truncated"]);
    assert_has(
        &MemoryWriter::open_append(&dir).unwrap_err().to_string(),
        &["shard-000001/keys.npy", "truncated"],
    );
}

#[test]
fn shard_files_must_match_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    small_memory(&dir);
    let image = dir.join("shard-000000/image_values.npy");
    // Wrong dim in a values file.
    npy::write_f32_matrix(&image, 3, 4, &[0.0; 12]).unwrap();
    assert_has(
        &open_err(&dir),
        &["shard-000000/image_values.npy", "3 rows x dim 5", "[3, 4]"],
    );
    // Wrong row count.
    npy::write_f32_matrix(&image, 2, 5, &[0.0; 10]).unwrap();
    assert_has(
        &open_err(&dir),
        &["shard-000000/image_values.npy", "[2, 5]"],
    );
    // Wrong dtype.
    npy::write_f16_matrix(&image, 3, 5, &[0.0; 15]).unwrap();
    assert_has(
        &open_err(&dir),
        &["image_values.npy", "expected dtype <f4", "<f2"],
    );
    npy::write_f32_matrix(&image, 3, 5, &[0.0; 15]).unwrap();
    Memory::open(&dir).unwrap();
    // Missing metadata, then a missing shard.
    fs::remove_file(dir.join("shard-000001/metadata.jsonl")).unwrap();
    assert_has(&open_err(&dir), &["shard-000001/metadata.jsonl", "missing"]);
    fs::remove_dir_all(dir.join("shard-000001")).unwrap();
    assert_has(&open_err(&dir), &["shard-000001", "directory is missing"]);
}

#[test]
fn metadata_line_count_is_checked_on_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    small_memory(&dir);
    let meta = dir.join("shard-000000/metadata.jsonl");
    let text = fs::read_to_string(&meta).unwrap();
    let short: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    fs::write(&meta, short).unwrap();
    let memory = Memory::open(&dir).unwrap();
    let err = memory.metadata(0).unwrap_err().to_string();
    assert_has(
        &err,
        &["shard-000000/metadata.jsonl", "2 metadata lines", "3 rows"],
    );
    // The other shard is unaffected.
    assert_eq!(memory.metadata(4).unwrap().id, 4);
}

#[test]
fn not_a_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert_has(
        &open_err(&empty),
        &["empty", "not a ramem memory", "no manifest.json"],
    );
    assert_has(
        &open_err(&tmp.path().join("nope")),
        &["nope", "does not exist"],
    );
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert_has(&open_err(&file), &["file", "not a directory"]);
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(
        other.join("manifest.json"),
        b"{\"format\": \"something-else\"}",
    )
    .unwrap();
    assert_has(
        &open_err(&other),
        &["other/manifest.json", "something-else"],
    );
    fs::write(other.join("manifest.json"), b"{not json").unwrap();
    assert_has(
        &open_err(&other),
        &["other/manifest.json", "not valid JSON"],
    );
    // A manifest whose shard list disagrees with its count.
    let dir = tmp.path().join("mem");
    small_memory(&dir);
    let path = dir.join("manifest.json");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace("\"count\": 5,", "\"count\": 6,")).unwrap();
    assert_has(
        &open_err(&dir),
        &["mem/manifest.json", "count\" is 6", "hold 5"],
    );
}

#[test]
fn create_refuses_existing_or_foreign_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    small_memory(&dir);
    let err = MemoryWriter::create(&dir, spec(FloatDtype::F16, true))
        .unwrap_err()
        .to_string();
    assert_has(&err, &["mem", "already exists"]);
    let full = tmp.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("precious.txt"), b"x").unwrap();
    let err = MemoryWriter::create(&full, spec(FloatDtype::F16, true))
        .unwrap_err()
        .to_string();
    assert_has(&err, &["full", "not empty", "precious.txt"]);
}

#[test]
fn bad_batches_are_refused_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    small_memory(&dir);
    let before = tree(&dir);
    let mut w = MemoryWriter::open_append(&dir).unwrap();
    let meta = vec![MetadataEntry::default(); 2];
    let keys = vec![0.5f32; 12];
    let image = vec![0.1f32; 10];
    let text = vec![0.1f32; 6];
    let ok = ShardBatch {
        keys: &keys,
        image_values: Some(&image),
        text_values: Some(&text),
        metadata: &meta,
    };
    let mut nan_keys = keys.clone();
    nan_keys[6 + 4] = f32::NAN;
    let mut inf_text = text.clone();
    inf_text[5] = f32::INFINITY;
    let zero = vec![0.0f32; 12];
    let mut big_text = text.clone();
    big_text[1] = 70_000.0;
    let cases: Vec<(ShardBatch, &[&str])> = vec![
        (
            ShardBatch {
                keys: &keys[..10],
                ..ok
            },
            &["whole rows of key dim 6"],
        ),
        (ShardBatch { keys: &[], ..ok }, &["empty shard"]),
        (
            ShardBatch {
                image_values: Some(&image[..8]),
                ..ok
            },
            &["image values", "2 rows x dim 5"],
        ),
        (
            ShardBatch {
                text_values: None,
                ..ok
            },
            &["text values but the batch has none"],
        ),
        (
            ShardBatch {
                metadata: &meta[..1],
                ..ok
            },
            &["2 key rows but 1 metadata"],
        ),
        (
            ShardBatch {
                keys: &nan_keys,
                ..ok
            },
            &["batch keys row 6 ", "NaN", "column 4"],
        ),
        (
            ShardBatch {
                text_values: Some(&inf_text),
                ..ok
            },
            &["text values row 6 ", "inf"],
        ),
        (ShardBatch { keys: &zero, ..ok }, &["all zeros"]),
        (
            ShardBatch {
                text_values: Some(&big_text),
                ..ok
            },
            &["text values row 5 ", "70000", "f16 range"],
        ),
    ];
    for (batch, needles) in cases {
        let err = w.append_shard(batch).unwrap_err().to_string();
        assert_has(&err, needles);
        assert_has(&err, &["mem"]);
    }
    assert!(tree(&dir) == before, "a refused batch changed the memory");
    w.append_shard(ok).unwrap();
    assert_eq!(Memory::open(&dir).unwrap().count(), 7);
}

fn import_err(mem: &Path, keys: &Path, image: Option<&Path>, meta: Option<&Path>) -> String {
    import_npy(mem, keys, image, None, meta, &ImportOptions::default(), 4)
        .unwrap_err()
        .to_string()
}

#[test]
fn import_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let inputs = make_inputs(t, 10);
    let mem = t.join("mem");

    // Row-count mismatch between keys and values.
    let short = t.join("short_image.npy");
    npy::write_f32_matrix(&short, 9, 4, &[0.5; 36]).unwrap();
    assert_has(
        &import_err(&mem, &inputs.keys, Some(&short), None),
        &["short_image.npy", "9 rows", "keys.npy", "has 10"],
    );
    // Metadata line count mismatch.
    let meta = t.join("short.jsonl");
    fs::write(&meta, "{\"source\": \"a\"}\n".repeat(9)).unwrap();
    assert_has(
        &import_err(&mem, &inputs.keys, None, Some(&meta)),
        &["short.jsonl", "9 metadata lines", "10 rows"],
    );
    // A metadata line that is not an object.
    let bad_meta = t.join("bad.jsonl");
    fs::write(
        &bad_meta,
        "{\"source\": \"a\"}\n".repeat(5) + &"[1]\n".repeat(5),
    )
    .unwrap();
    assert_has(
        &import_err(&mem, &inputs.keys, None, Some(&bad_meta)),
        &["bad.jsonl", "line 6"],
    );
    fs::remove_dir_all(&mem).unwrap();
    // Empty keys.
    let empty = t.join("empty.npy");
    npy::write_f32_matrix(&empty, 0, DIM, &[]).unwrap();
    assert_has(
        &import_err(&mem, &empty, None, None),
        &["empty.npy", "nothing to import"],
    );
    // A NaN row: shards before it are committed, the error names file and row.
    let mut data = Rng(5).vec(10 * DIM);
    data[7 * DIM + 2] = f32::NAN;
    let nan = t.join("nan.npy");
    npy::write_f32_matrix(&nan, 10, DIM, &data).unwrap();
    assert_has(
        &import_err(&mem, &nan, None, None),
        &["nan.npy", "row 7 ", "NaN", "column 2"],
    );
    assert_eq!(Memory::open(&mem).unwrap().count(), 4);
    // An all-zero key cannot be normalised.
    let mut data = Rng(5).vec(10 * DIM);
    data[9 * DIM..].fill(0.0);
    let zero = t.join("zero.npy");
    npy::write_f32_matrix(&zero, 10, DIM, &data).unwrap();
    assert_has(
        &import_err(&t.join("mz"), &zero, None, None),
        &["zero.npy", "row 9 is all zeros"],
    );
    // Adding keys of another dim, or other files before the unfinished import is done.
    let wide = t.join("wide.npy");
    npy::write_f32_matrix(&wide, 10, DIM + 1, &Rng(1).vec(10 * (DIM + 1))).unwrap();
    assert_has(
        &import_err(&mem, &wide, None, None),
        &[
            "mem/manifest.json",
            "other settings",
            "key dimension: the memory has 8, this would write 9",
        ],
    );
    let tiny = t.join("tiny.npy");
    npy::write_f32_matrix(&tiny, 2, DIM, &Rng(1).vec(2 * DIM)).unwrap();
    assert_has(
        &import_err(&mem, &tiny, None, None),
        &["not finished", "4 of the 10 rows", "nan.npy", "tiny.npy"],
    );
    // Not a float matrix at all.
    let ints = t.join("ints.npy");
    npy::write_i64_matrix(&ints, 2, 2, &[1, 2, 3, 4]).unwrap();
    assert_has(
        &import_err(&t.join("m2"), &ints, None, None),
        &["ints.npy", "dtype"],
    );
    let err = import_npy(
        &t.join("m3"),
        &inputs.keys,
        None,
        None,
        None,
        &ImportOptions::default(),
        0,
    )
    .unwrap_err()
    .to_string();
    assert_has(&err, &["m3", "shard_rows"]);
}

// ---------------------------------------------------------------------------
// Scale (run by hand; the numbers are in docs/FORMAT.md)

fn vm_hwm_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path, file: &str) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().join(file))
        .filter(|p| p.is_file())
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

/// `RAMEM_SCALE_ROWS` (default 1,000,000) x 384 random unit vectors, stored
/// as f16 keys with a source path per row.
#[test]
#[ignore = "scale test: about 2.5 GB of disk, run by hand with --ignored --nocapture"]
fn scale_import_one_million() {
    let rows: usize = std::env::var("RAMEM_SCALE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dim = 384;
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys.npy");
    let sources = tmp.path().join("sources.txt");
    let t = Instant::now();
    let mut rng = Rng(11);
    let mut w = NpyWriter::create(&keys, Dtype::F32, dim).unwrap();
    let mut text = String::new();
    for start in (0..rows).step_by(10_000) {
        let n = 10_000.min(rows - start);
        w.append_rows(&normalized(&rng.vec(n * dim), dim)).unwrap();
        for i in start..start + n {
            text.push_str(&format!("train/n{:08}/img_{i:07}.JPEG\n", i % 1000));
        }
    }
    w.finish().unwrap();
    fs::write(&sources, &text).unwrap();
    drop(text);
    eprintln!(
        "inputs written in {:.1} s; VmHWM {} MiB",
        t.elapsed().as_secs_f64(),
        vm_hwm_kib() / 1024
    );

    let mem = tmp.path().join("mem");
    let report = import_npy(
        &mem,
        &keys,
        None,
        None,
        Some(&sources),
        &ImportOptions::default(),
        65_536,
    )
    .unwrap();
    let hwm = vm_hwm_kib();
    let key_bytes = dir_bytes(&mem, "keys.npy");
    let meta_bytes = dir_bytes(&mem, "metadata.jsonl");
    let manifest_bytes = fs::metadata(mem.join("manifest.json")).unwrap().len();
    let t = Instant::now();
    let memory = Memory::open(&mem).unwrap();
    let reopen = t.elapsed();
    assert_eq!(memory.count(), rows as u64);
    let t = Instant::now();
    let last = memory.metadata(rows as i64 - 1).unwrap();
    let first_meta = t.elapsed();
    assert_eq!(last.id, rows as i64 - 1);
    let mut sum = 0.0f64;
    for s in 0..memory.shard_count() {
        if let KeysData::F16(d) = memory.shard_keys(s).data {
            sum += d.iter().map(|v| f64::from(v.to_f32()).powi(2)).sum::<f64>();
        }
    }
    let t_scan = t.elapsed();
    assert!(
        (sum / rows as f64 - 1.0).abs() < 1e-3,
        "mean squared norm {sum}"
    );
    eprintln!(
        "rows {rows} x {dim}: import {:.1} s ({:.0} rows/s), {} shards",
        report.elapsed.as_secs_f64(),
        rows as f64 / report.elapsed.as_secs_f64(),
        report.shards_written
    );
    eprintln!(
        "on disk: keys {key_bytes} B, metadata {meta_bytes} B, manifest {manifest_bytes} B; \
         {:.1} bytes/entry (keys+metadata)",
        (key_bytes + meta_bytes) as f64 / rows as f64
    );
    eprintln!(
        "peak memory (VmHWM) {} MiB; reopen {:.1} ms; first metadata lookup {:.1} ms; \
         key scan (+lookup) {:.2} s",
        hwm / 1024,
        reopen.as_secs_f64() * 1e3,
        first_meta.as_secs_f64() * 1e3,
        t_scan.as_secs_f64()
    );
}
