//! `ramem memory dedup` and `ramem memory import --clip-retrieval` end to
//! end: real files in, memory directories out.

mod common;

use common::{p, ramem, rows, unit};
use std::path::Path;
use std::process::Output;

use ramem_store::memory::{Memory, ValueKind};
use ramem_store::npy::write_f32_matrix;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A vector with cosine similarity `c` to `t`.
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

const DIM: usize = 16;

#[test]
fn dedup_drops_copies_of_test_rows_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let test = rows(5, DIM, 1);
    let mut keys = rows(40, DIM, 2);
    // Exact copy of test row 4 at id 6, cosine-0.99 copy of test row 0 at id 25.
    keys[6 * DIM..7 * DIM].copy_from_slice(&test[4 * DIM..5 * DIM]);
    keys[25 * DIM..26 * DIM].copy_from_slice(&at_cosine(&test[..DIM], 0.99, 3));
    let (keys_path, text_path, meta_path, test_path) = (
        dir.path().join("keys.npy"),
        dir.path().join("text.npy"),
        dir.path().join("meta.jsonl"),
        dir.path().join("test.npy"),
    );
    write_f32_matrix(&keys_path, 40, DIM, &keys).unwrap();
    write_f32_matrix(&text_path, 40, 8, &rows(40, 8, 4)).unwrap();
    write_f32_matrix(&test_path, 5, DIM, &test).unwrap();
    let lines: String = (0..40)
        .map(|i| format!("{{\"source\": \"img{i}.jpg\", \"caption\": \"photo {i}\"}}\n"))
        .collect();
    std::fs::write(&meta_path, lines).unwrap();
    let mem = dir.path().join("mem");
    let out = ramem(&[
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--keys",
        p(&keys_path),
        "--image-values",
        p(&keys_path),
        "--text-values",
        p(&text_path),
        "--metadata",
        p(&meta_path),
        "--shard-rows",
        "16",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mem2 = dir.path().join("mem2");
    let dedup = |out_dir: &Path, threshold: &str, test: &Path| {
        ramem(&[
            "memory",
            "dedup",
            "--memory",
            p(&mem),
            "--test",
            p(test),
            "--threshold",
            threshold,
            "--out",
            p(out_dir),
        ])
    };
    let out = dedup(&mem2, "0.95", &test_path);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("dropped 2 of 40"), "{stdout}");

    let source = Memory::open(&mem).unwrap();
    let copy = Memory::open(&mem2).unwrap();
    assert_eq!(copy.count(), 38);
    assert_eq!(copy.manifest().key, source.manifest().key);
    assert_eq!(copy.manifest().values, source.manifest().values);
    let kept: Vec<i64> = (0..40).filter(|&i| i != 6 && i != 25).collect();
    for (new, &old) in kept.iter().enumerate() {
        let new = new as i64;
        for (a, b) in copy.key(new).unwrap().iter().zip(source.key(old).unwrap()) {
            assert!((a - b).abs() <= 1e-3);
        }
        for kind in [ValueKind::Image, ValueKind::Text] {
            assert_eq!(
                copy.values(kind, new).unwrap(),
                source.values(kind, old).unwrap()
            );
        }
        let m = copy.metadata(new).unwrap();
        assert_eq!(m.source, Some(format!("img{old}.jpg")));
        assert_eq!(m.caption, Some(format!("photo {old}")));
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mem2.join("dedup.json")).unwrap()).unwrap();
    assert_eq!(record["dropped"], serde_json::json!([6, 25]));
    assert_eq!(record["threshold"], serde_json::json!(0.95));
    assert_eq!(record["source"], serde_json::json!(p(&mem)));
    assert_eq!(record["test"], serde_json::json!(p(&test_path)));

    // Errors: --out is the memory; --out exists and is not empty; threshold
    // out of range; a test set of another dimension (named).
    let out = dedup(&mem, "0.95", &test_path);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is the memory being deduplicated"),
        "{}",
        stderr(&out)
    );
    let out = dedup(&mem2, "0.95", &test_path);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    for t in ["-1", "1.01", "NaN"] {
        let out = dedup(&dir.path().join("mem3"), t, &test_path);
        assert!(!out.status.success(), "threshold {t}");
        assert!(stderr(&out).contains("outside (-1, 1]"), "{}", stderr(&out));
    }
    let narrow = dir.path().join("narrow.npy");
    write_f32_matrix(&narrow, 5, DIM - 1, &rows(5, DIM - 1, 9)).unwrap();
    let out = dedup(&dir.path().join("mem3"), "0.95", &narrow);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("narrow.npy"), "{}", stderr(&out));
    assert!(stderr(&out).contains("15 dimensions"), "{}", stderr(&out));
    assert!(!dir.path().join("mem3").exists());
}

#[test]
fn import_clip_retrieval_folder() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("emb");
    std::fs::create_dir_all(layout.join("img_emb")).unwrap();
    std::fs::create_dir_all(layout.join("text_emb")).unwrap();
    let (img0, img1) = (rows(3, DIM, 1), rows(2, DIM, 2));
    let (txt0, txt1) = (rows(3, 4, 3), rows(2, 4, 4));
    write_f32_matrix(layout.join("img_emb/img_emb_0.npy"), 3, DIM, &img0).unwrap();
    write_f32_matrix(layout.join("img_emb/img_emb_1.npy"), 2, DIM, &img1).unwrap();
    write_f32_matrix(layout.join("text_emb/text_emb_0.npy"), 3, 4, &txt0).unwrap();
    write_f32_matrix(layout.join("text_emb/text_emb_1.npy"), 2, 4, &txt1).unwrap();
    let mem = dir.path().join("mem");
    let out = ramem(&[
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--clip-retrieval",
        p(&layout),
        "--key-encoder",
        "clip-vit-b32",
        "--image-encoder",
        "clip-vit-b32",
        "--text-encoder",
        "clip-vit-b32",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let memory = Memory::open(&mem).unwrap();
    assert_eq!(memory.count(), 5);
    assert_eq!(memory.manifest().key.encoder, "clip-vit-b32");
    let img: Vec<f32> = img0.iter().chain(&img1).copied().collect();
    let txt: Vec<f32> = txt0.iter().chain(&txt1).copied().collect();
    for id in 0..5 {
        let i = id as usize;
        assert_eq!(
            memory.values(ValueKind::Image, id).unwrap(),
            &img[i * DIM..(i + 1) * DIM]
        );
        assert_eq!(
            memory.values(ValueKind::Text, id).unwrap(),
            &txt[i * 4..(i + 1) * 4]
        );
    }

    // A text file with the wrong row count is named.
    write_f32_matrix(layout.join("text_emb/text_emb_1.npy"), 4, 4, &rows(4, 4, 4)).unwrap();
    let out = ramem(&[
        "memory",
        "import",
        "--memory",
        p(&dir.path().join("mem2")),
        "--clip-retrieval",
        p(&layout),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("text_emb_1.npy"), "{}", stderr(&out));

    // --clip-retrieval replaces --keys; neither is an error.
    let keys = layout.join("img_emb/img_emb_0.npy");
    let both = ramem(&[
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--clip-retrieval",
        p(&layout),
        "--keys",
        p(&keys),
    ]);
    assert!(!both.status.success());
    let neither = ramem(&["memory", "import", "--memory", p(&mem)]);
    assert!(!neither.status.success());
    assert!(stderr(&neither).contains("--keys"), "{}", stderr(&neither));
}
