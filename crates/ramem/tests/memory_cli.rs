//! `ramem memory import|info` end to end: real files in, a memory directory out.

mod common;

use std::path::Path;

use common::{p, ramem, rows};

use ramem_store::memory::Memory;
use ramem_store::npy::write_f32_matrix;

#[test]
fn import_then_info_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, text, meta, mem) = (
        dir.path().join("keys.npy"),
        dir.path().join("text.npy"),
        dir.path().join("meta.jsonl"),
        dir.path().join("mem"),
    );
    let key_rows = rows(50, 16, 1);
    write_f32_matrix(&keys, 50, 16, &key_rows).unwrap();
    write_f32_matrix(&text, 50, 8, &rows(50, 8, 2)).unwrap();
    let lines: String = (0..50)
        .map(|i| format!("{{\"source\": \"img{i}.jpg\", \"caption\": \"photo {i}\"}}\n"))
        .collect();
    std::fs::write(&meta, lines).unwrap();
    let import = [
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--keys",
        p(&keys),
        "--text-values",
        p(&text),
        "--metadata",
        p(&meta),
        "--shard-rows",
        "20",
    ];
    let out = ramem(&import);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let memory = Memory::open(&mem).unwrap();
    assert_eq!(memory.count(), 50);
    assert_eq!(memory.shard_count(), 3);
    let row7 = memory.key(7).unwrap();
    let want: Vec<f32> = key_rows[7 * 16..8 * 16].to_vec();
    let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
    for (got, want) in row7.iter().zip(&want) {
        assert!(
            (got - want / norm).abs() < 2e-3,
            "keys are stored unit-norm in f16"
        );
    }
    assert_eq!(
        memory.metadata(49).unwrap().caption.as_deref(),
        Some("photo 49")
    );

    let info = ramem(&["memory", "info", "--memory", p(&mem)]);
    let text_out = String::from_utf8_lossy(&info.stdout);
    assert!(
        text_out.contains("entries:  50")
            && text_out.contains("50 x 16 f16")
            && text_out.contains("50 x 8 f32"),
        "{text_out}"
    );

    // Running the same import again finds everything committed and changes nothing.
    let again = ramem(&import);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("resuming: 50 of 50"));
    assert_eq!(Memory::open(&mem).unwrap().count(), 50);
}

#[test]
fn import_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.npy");
    write_f32_matrix(&keys, 10, 16, &rows(10, 16, 3)).unwrap();
    let short = dir.path().join("short_values.npy");
    write_f32_matrix(&short, 9, 8, &rows(9, 8, 4)).unwrap();
    let mut with_nan = rows(10, 16, 5);
    with_nan[3 * 16 + 2] = f32::NAN;
    let nan = dir.path().join("nan_keys.npy");
    write_f32_matrix(&nan, 10, 16, &with_nan).unwrap();
    let text = dir.path().join("keys.txt");
    std::fs::write(&text, "not an array").unwrap();

    let cases: [(&[&str], &str); 3] = [
        (
            &["--keys", p(&keys), "--image-values", p(&short)],
            "short_values.npy",
        ),
        (&["--keys", p(&nan)], "nan_keys.npy"),
        (&["--keys", p(&text)], "keys.txt"),
    ];
    for (i, (extra, file)) in cases.iter().enumerate() {
        let mem = dir.path().join(format!("mem{i}"));
        let mut args = vec!["memory", "import", "--memory", p(&mem)];
        args.extend_from_slice(extra);
        let out = ramem(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "import with {file} should fail");
        assert!(stderr.contains(file), "error should name {file}:\n{stderr}");
    }
    let out = ramem(&["memory", "info", "--memory", p(dir.path())]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("manifest"),
        "not a memory"
    );
}

/// Imports `n` random `dim`-d keys (stored f32) into `dir/mem`; returns the unit-norm keys.
fn small_memory(dir: &Path, n: usize, dim: usize) -> Vec<f32> {
    let keys = dir.join("keys.npy");
    let mut data = rows(n, dim, 21);
    write_f32_matrix(&keys, n, dim, &data).unwrap();
    let out = ramem(&[
        "memory",
        "import",
        "--memory",
        p(&dir.join("mem")),
        "--keys",
        p(&keys),
        "--key-dtype",
        "f32",
        "--shard-rows",
        "64",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in data.chunks_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    data
}

#[test]
fn search_finds_the_brute_force_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let (n, dim, k) = (200, 12, 5);
    let keys = small_memory(dir.path(), n, dim);
    let queries = rows(7, dim, 33);
    let qpath = dir.path().join("q.npy");
    write_f32_matrix(&qpath, 7, dim, &queries).unwrap();
    let (ids, scores) = (dir.path().join("nn.npy"), dir.path().join("s.npy"));
    let mem = dir.path().join("mem");
    let out = ramem(&[
        "search",
        "--memory",
        p(&mem),
        "--queries",
        p(&qpath),
        "--k",
        "5",
        "--out",
        p(&ids),
        "--scores",
        p(&scores),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = ramem_store::npy::read_i64_matrix(&ids).unwrap();
    let got_scores = ramem_store::npy::read_f32_matrix(&scores).unwrap();
    assert_eq!((got.rows, got.cols), (7, k));
    for (qi, q) in queries.chunks(dim).enumerate() {
        let qn = q.iter().map(|v| v * v).sum::<f32>().sqrt();
        let mut all: Vec<(f32, i64)> = keys
            .chunks(dim)
            .enumerate()
            .map(|(i, key)| {
                (
                    key.iter().zip(q).map(|(a, b)| a * b / qn).sum::<f32>(),
                    i as i64,
                )
            })
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let want: Vec<i64> = all[..k].iter().map(|x| x.1).collect();
        assert_eq!(&got.data[qi * k..(qi + 1) * k], &want[..], "query {qi}");
        for (got, want) in got_scores.data[qi * k..(qi + 1) * k].iter().zip(&all) {
            assert!((got - want.0).abs() < 1e-5);
        }
    }

    // Queries taken from the memory find themselves first, unless --exclude-self.
    let own = dir.path().join("own.npy");
    write_f32_matrix(&own, 3, dim, &keys[..3 * dim]).unwrap();
    let first = |extra: &[&str]| {
        let mut args = vec![
            "search",
            "--memory",
            p(&mem),
            "--queries",
            p(&own),
            "--k",
            "2",
            "--out",
            p(&ids),
        ];
        args.extend_from_slice(extra);
        assert!(ramem(&args).status.success());
        let m = ramem_store::npy::read_i64_matrix(&ids).unwrap();
        (0..3).map(|i| m.data[i * 2]).collect::<Vec<_>>()
    };
    assert_eq!(first(&[]), [0, 1, 2]);
    let excluded = first(&["--exclude-self"]);
    assert!(
        excluded.iter().enumerate().all(|(i, &id)| id != i as i64),
        "{excluded:?}"
    );
}

#[test]
fn search_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    small_memory(dir.path(), 100, 12);
    let mem = dir.path().join("mem");
    let out_ids = dir.path().join("nn.npy");
    let queries = dir.path().join("queries.npy");
    write_f32_matrix(&queries, 2, 12, &rows(2, 12, 5)).unwrap();
    let wrong_dim = dir.path().join("wrong_dim.npy");
    write_f32_matrix(&wrong_dim, 2, 10, &rows(2, 10, 5)).unwrap();
    let mut nan_rows = rows(2, 12, 5);
    nan_rows[13] = f32::NAN;
    let nan = dir.path().join("nan_queries.npy");
    write_f32_matrix(&nan, 2, 12, &nan_rows).unwrap();
    let not_npy = dir.path().join("queries.csv");
    std::fs::write(&not_npy, "0.1,0.2\n").unwrap();

    let search = |q: &Path, k: &str| {
        ramem(&[
            "search",
            "--memory",
            p(&mem),
            "--queries",
            p(q),
            "--k",
            k,
            "--out",
            p(&out_ids),
        ])
    };
    for (out, needle) in [
        (search(&wrong_dim, "3"), "wrong_dim.npy"),
        (search(&nan, "3"), "nan_queries.npy"),
        (search(&not_npy, "3"), "queries.csv"),
        (search(&queries, "0"), "--k"),
        (search(&queries, "101"), "holds 100 entries"),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "expected an error naming {needle}:\n{stderr}"
        );
    }
    assert!(!out_ids.exists(), "no output after a failed search");

    // A truncated key file and a manifest from a newer format are refused, naming the file.
    let keys = mem.join("shard-000001/keys.npy");
    let bytes = std::fs::read(&keys).unwrap();
    std::fs::write(&keys, &bytes[..bytes.len() - 100]).unwrap();
    let stderr = String::from_utf8_lossy(&search(&queries, "3").stderr).to_string();
    assert!(
        stderr.contains("shard-000001") && stderr.contains("keys.npy"),
        "{stderr}"
    );
    std::fs::write(&keys, &bytes).unwrap();
    let manifest = mem.join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 99");
    std::fs::write(&manifest, text).unwrap();
    let stderr = String::from_utf8_lossy(&search(&queries, "3").stderr).to_string();
    assert!(
        stderr.contains("manifest.json") && stderr.contains("99"),
        "{stderr}"
    );
}

/// Every file under `dir` (relative path, bytes), sorted; the writer lock
/// is left out (it records the last writer's pid).
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path
                .file_name()
                .is_some_and(|n| n != ramem_store::memory::LOCK_FILE)
            {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn killed_import_command_resumes_to_the_same_memory() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let (keys, text, mem, whole) = (
        dir.path().join("keys.npy"),
        dir.path().join("text.npy"),
        dir.path().join("mem"),
        dir.path().join("whole"),
    );
    // Many small shards, each committed on its own, so the import takes a
    // while and the kill lands between commits or inside one.
    let n = 20_000;
    write_f32_matrix(&keys, n, 16, &rows(n, 16, 11)).unwrap();
    write_f32_matrix(&text, n, 4, &rows(n, 4, 12)).unwrap();
    let args = |m: &Path| -> Vec<String> {
        [
            "memory",
            "import",
            "--memory",
            p(m),
            "--keys",
            p(&keys),
            "--text-values",
            p(&text),
            "--shard-rows",
            "50",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramem"))
        .args(args(&mem))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let count = ramem_store::memory::Manifest::read(&mem).map_or(0, |m| m.count);
        if count >= 500 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import finished before it could be killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the import made no progress"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the import was not killed: {status}");

    // Every committed shard reads back and `memory info` works.
    let memory = Memory::open(&mem).unwrap();
    let committed = memory.count();
    eprintln!("killed after {committed} committed rows");
    assert!(committed >= 500 && committed < n as u64, "{committed}");
    assert_eq!(committed % 50, 0, "only whole shards are committed");
    let source = ramem_store::npy::read_f32_matrix(&keys).unwrap();
    for row in [0, committed as usize / 2, committed as usize - 1] {
        let want = common::unit(source.row(row));
        let got = memory.key(row as i64).unwrap();
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 2e-3),
            "row {row}"
        );
    }
    drop(memory);
    let info = ramem(&["memory", "info", "--memory", p(&mem)]);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );

    // The same command again completes the import; the result is the same,
    // byte for byte, as an import that was never interrupted.
    let resume: Vec<String> = args(&mem);
    let out = ramem(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full: Vec<String> = args(&whole);
    let out = ramem(&full.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Memory::open(&mem).unwrap().count(), n as u64);
    let (got, want) = (tree(&mem), tree(&whole));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    assert!(
        got == want,
        "the resumed memory differs from an uninterrupted import"
    );
}
