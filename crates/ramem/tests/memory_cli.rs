//! `ramem memory import|info` end to end: real files in, a memory directory out.

use std::path::Path;
use std::process::{Command, Output};

use ramem_store::memory::Memory;
use ramem_store::npy::write_f32_matrix;

fn ramem(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ramem"))
        .args(args)
        .output()
        .expect("run ramem");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "ramem panicked:\n{stderr}");
    out
}

fn p(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Deterministic pseudo-random rows.
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
