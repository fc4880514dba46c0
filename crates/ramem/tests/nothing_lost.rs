//! Nothing lost, nothing silent: what a careful user and a tester looking
//! for data loss found in the command line, one test each. Imports never
//! mix two files' rows; truncated JPEGs and 1-D embedding arrays are
//! refused; padding in search results is said; failed runs leave nothing
//! in the way of a retry; one writer at a time; long work logs its
//! progress without a terminal; messages name what differs, once; RGBA is
//! composited onto white.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{p, ramem, rows, unit};
use ramem_store::memory::{Memory, MemoryWriter};
use ramem_store::npy::write_f32_matrix;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let out = ramem(args);
    assert!(
        out.status.success(),
        "ramem {args:?} failed:\n{}",
        stderr(&out)
    );
    stderr(&out)
}

fn fails(args: &[&str]) -> String {
    let out = ramem(args);
    assert!(
        !out.status.success(),
        "ramem {args:?} succeeded:\n{}",
        stderr(&out)
    );
    stderr(&out)
}

fn photo(name: &str) -> PathBuf {
    let out = ramem(&["assets", "path", "sample-photos"]);
    assert!(out.status.success(), "sample photos: {}", stderr(&out));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(name)
}

/// The memory's keys, row after row.
fn keys_of(mem: &Path) -> Vec<Vec<f32>> {
    let memory = Memory::open(mem).unwrap();
    (0..memory.count() as i64)
        .map(|id| memory.key(id).unwrap())
        .collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 2e-3)
}

const DIM: usize = 8;

#[test]
fn an_import_of_another_file_is_refused_or_appended_never_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, mem) = (
        tmp.path().join("a.npy"),
        tmp.path().join("b.npy"),
        tmp.path().join("mem"),
    );
    let (a_rows, b_rows) = (rows(10, DIM, 1), rows(6, DIM, 2));
    write_f32_matrix(&a, 10, DIM, &a_rows).unwrap();
    write_f32_matrix(&b, 6, DIM, &b_rows).unwrap();
    let import = |keys: &Path, extra: &[&str]| {
        let mut args = vec!["memory", "import", "--memory", p(&mem), "--keys", p(keys)];
        args.extend_from_slice(extra);
        ramem(&args)
    };
    assert!(import(&a, &[]).status.success());
    let refused = import(&b, &[]);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("a.npy") && err.contains("b.npy") && err.contains("--append"),
        "{err}"
    );
    // Exactly A's rows.
    let held = keys_of(&mem);
    assert_eq!(held.len(), 10);
    for (i, row) in held.iter().enumerate() {
        assert!(
            close(row, &unit(&a_rows[i * DIM..(i + 1) * DIM])),
            "row {i}"
        );
    }
    // With --append: A's rows, then B's.
    let appended = import(&b, &["--append"]);
    assert!(appended.status.success(), "{}", stderr(&appended));
    assert!(
        stderr(&appended).contains("memory rows 10..16"),
        "{}",
        stderr(&appended)
    );
    let held = keys_of(&mem);
    assert_eq!(held.len(), 16);
    for (i, row) in held[10..].iter().enumerate() {
        assert!(
            close(row, &unit(&b_rows[i * DIM..(i + 1) * DIM])),
            "row {}",
            10 + i
        );
    }
}

#[test]
fn a_truncated_jpeg_is_unreadable_even_without_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let jpeg = std::fs::read(photo("rocket.jpg")).unwrap();
    std::fs::write(input.join("a.jpg"), &jpeg).unwrap();
    std::fs::write(input.join("cut.jpg"), &jpeg[..jpeg.len() * 2 / 3]).unwrap();
    let out = tmp.path().join("emb.npy");
    let err = ok(&["embed", "--input", p(&input), "--out", p(&out)]);
    assert!(err.contains("skipped 1 of 2 images"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("cut.jpg") && l.contains("truncated JPEG")),
        "{err}"
    );
    let strict = tmp.path().join("strict.npy");
    let err = fails(&[
        "embed",
        "--input",
        p(&input),
        "--out",
        p(&strict),
        "--strict",
    ]);
    assert!(
        err.contains("cut.jpg") && err.contains("truncated JPEG"),
        "{err}"
    );
}

/// A `.npy` file holding a 1-D `<f4` array.
fn write_one_dimensional(path: &Path, values: &[f32]) {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        values.len()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn embeddings_must_be_two_dimensional() {
    let tmp = tempfile::tempdir().unwrap();
    let flat = tmp.path().join("flat.npy");
    write_one_dimensional(&flat, &rows(1000, 1, 3));
    let mem = tmp.path().join("mem");
    let err = fails(&["memory", "import", "--memory", p(&mem), "--keys", p(&flat)]);
    assert!(
        err.contains("flat.npy") && err.contains("1-D array of 1000 values"),
        "{err}"
    );
    assert!(!mem.join("manifest.json").exists() || Memory::open(&mem).unwrap().count() == 0);
    // Queries and test sets too.
    let keys = tmp.path().join("keys.npy");
    write_f32_matrix(&keys, 20, DIM, &rows(20, DIM, 4)).unwrap();
    let good = tmp.path().join("good");
    ok(&["memory", "import", "--memory", p(&good), "--keys", p(&keys)]);
    let out = tmp.path().join("nn.npy");
    let err = fails(&[
        "search",
        "--memory",
        p(&good),
        "--queries",
        p(&flat),
        "--k",
        "3",
        "--out",
        p(&out),
    ]);
    assert!(err.contains("flat.npy") && err.contains("1-D"), "{err}");
    let copy = tmp.path().join("copy");
    let err = fails(&[
        "memory",
        "dedup",
        "--memory",
        p(&good),
        "--test",
        p(&flat),
        "--out",
        p(&copy),
    ]);
    assert!(err.contains("flat.npy") && err.contains("1-D"), "{err}");
}

#[test]
fn padding_in_search_results_is_warned_and_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys.npy");
    write_f32_matrix(&keys, 5, DIM, &rows(5, DIM, 5)).unwrap();
    let mem = tmp.path().join("mem");
    ok(&["memory", "import", "--memory", p(&mem), "--keys", p(&keys)]);
    let out = tmp.path().join("nn.npy");
    let search = |k: &str| -> Vec<String> {
        vec![
            "search".into(),
            "--memory".into(),
            p(&mem).into(),
            "--queries".into(),
            p(&keys).into(),
            "--k".into(),
            k.into(),
            "--out".into(),
            p(&out).into(),
            "--exclude-self".into(),
        ]
    };
    let args = search("5");
    let err = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("5 of the 25 result slots") && err.contains("id -1"),
        "{err}"
    );
    let ids = ramem_store::npy::read_i64_matrix(&out).unwrap();
    assert!(ids.data.chunks(5).all(|row| row[4] == -1));
    let args = search("4");
    let err = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!err.contains("result slots"), "{err}");
    let help = ramem(&["search", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("id -1"));
}

#[test]
fn a_failed_import_does_not_block_a_corrected_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let (bad, mem) = (tmp.path().join("bad.npy"), tmp.path().join("mem"));
    let mut data = rows(10, DIM, 6);
    data[3] = f32::NAN;
    write_f32_matrix(&bad, 10, DIM, &data).unwrap();
    let err = fails(&["memory", "import", "--memory", p(&mem), "--keys", p(&bad)]);
    assert!(err.contains("bad.npy") && err.contains("NaN"), "{err}");
    // The corrected file, with other settings too, goes into the same directory.
    let fixed = tmp.path().join("fixed.npy");
    write_f32_matrix(&fixed, 10, DIM + 4, &rows(10, DIM + 4, 7)).unwrap();
    ok(&[
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--keys",
        p(&fixed),
        "--key-dtype",
        "f32",
    ]);
    let memory = Memory::open(&mem).unwrap();
    assert_eq!((memory.count(), memory.key_dim()), (10, DIM + 4));
}

#[test]
fn an_embed_where_every_image_failed_says_why_and_a_retry_after_the_fix_works() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.png"), b"").unwrap();
    std::fs::write(input.join("b.png"), b"not a picture").unwrap();
    let out = tmp.path().join("emb.npy");
    let err = fails(&["embed", "--input", p(&input), "--out", p(&out)]);
    for (file, why) in [
        ("a.png", "empty file"),
        ("b.png", "unrecognised image format"),
    ] {
        assert!(
            err.lines().any(|l| l.contains(file) && l.contains(why)),
            "{file}: {err}"
        );
    }
    assert!(!PathBuf::from(format!("{}.partial", out.display())).exists());
    // The files fixed, the same command works.
    std::fs::copy(photo("chelsea.png"), input.join("a.png")).unwrap();
    std::fs::copy(photo("coffee.png"), input.join("b.png")).unwrap();
    ok(&["embed", "--input", p(&input), "--out", p(&out)]);
    assert_eq!(ramem_store::npy::read_f32_matrix(&out).unwrap().rows, 2);
}

#[test]
fn a_second_writer_is_refused_naming_the_first_and_readers_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, mem) = (
        tmp.path().join("a.npy"),
        tmp.path().join("b.npy"),
        tmp.path().join("mem"),
    );
    write_f32_matrix(&a, 10, DIM, &rows(10, DIM, 8)).unwrap();
    write_f32_matrix(&b, 6, DIM, &rows(6, DIM, 9)).unwrap();
    ok(&["memory", "import", "--memory", p(&mem), "--keys", p(&a)]);
    // This test process is the first writer.
    let writer = MemoryWriter::open_append(&mem).unwrap();
    let err = fails(&[
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--keys",
        p(&b),
        "--append",
    ]);
    assert!(
        err.contains("being written by") && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    // Readers are not blocked.
    let info = ramem(&["memory", "info", "--memory", p(&mem)]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("entries:  10"));
    let out = tmp.path().join("nn.npy");
    ok(&[
        "search",
        "--memory",
        p(&mem),
        "--queries",
        p(&a),
        "--k",
        "2",
        "--out",
        p(&out),
    ]);
    drop(writer);
    ok(&[
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--keys",
        p(&b),
        "--append",
    ]);
    assert_eq!(Memory::open(&mem).unwrap().count(), 16);
}

#[test]
fn long_work_logs_its_progress_without_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for name in ["chelsea.png", "coffee.png", "rocket.jpg"] {
        std::fs::copy(photo(name), input.join(name)).unwrap();
    }
    let out = tmp.path().join("emb.npy");
    // stderr is a pipe here; an interval of 0 logs every update.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_ramem"))
        .args([
            "embed",
            "--input",
            p(&input),
            "--out",
            p(&out),
            "--batch",
            "1",
        ])
        .env("RAMEM_PROGRESS_INTERVAL", "0")
        .output()
        .unwrap();
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("embedding: ") && l.contains("/3 images (") && l.contains("ETA")),
        "{err}"
    );
}

#[test]
fn messages_name_what_differs_in_words_and_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, wide, mem) = (
        tmp.path().join("a.npy"),
        tmp.path().join("wide.npy"),
        tmp.path().join("mem"),
    );
    write_f32_matrix(&a, 4, DIM, &rows(4, DIM, 10)).unwrap();
    write_f32_matrix(&wide, 4, DIM + 1, &rows(4, DIM + 1, 11)).unwrap();
    ok(&["memory", "import", "--memory", p(&mem), "--keys", p(&a)]);
    let err = fails(&[
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--keys",
        p(&wide),
        "--append",
    ]);
    assert!(
        err.contains("key dimension: the memory has 8, this would write 9"),
        "{err}"
    );
    assert!(!err.contains("KeySpec") && !err.contains('{'), "{err}");
    // An OS error is said once.
    let missing = tmp.path().join("missing");
    let err = fails(&[
        "embed",
        "--input",
        p(&missing),
        "--out",
        p(&tmp.path().join("e.npy")),
    ]);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A log level that is none.
    let err = fails(&["--log", "bogus", "assets", "list"]);
    assert!(err.contains("bogus") && err.contains("debug"), "{err}");
    // One image file is one input.
    let one = tmp.path().join("cat.png");
    std::fs::copy(photo("chelsea.png"), &one).unwrap();
    let out = tmp.path().join("one.npy");
    ok(&["embed", "--input", p(&one), "--out", p(&out)]);
    let ids = std::fs::read_to_string(tmp.path().join("one.ids.txt")).unwrap();
    assert_eq!(ids, "cat.png\n");
}

#[test]
fn transparent_pixels_are_composited_onto_white() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    // A drawing on a transparent background whose hidden colour is black.
    let drawn = |x: u32, y: u32| (x / 8 + y / 8).is_multiple_of(3);
    let colour = |x: u32, y: u32| [(x * 4) as u8, (y * 4) as u8, 200];
    let rgba = image::RgbaImage::from_fn(64, 64, |x, y| {
        let [r, g, b] = colour(x, y);
        if drawn(x, y) {
            image::Rgba([r, g, b, 255])
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    });
    rgba.save(input.join("a_rgba.png")).unwrap();
    let on = |background: u8| {
        image::RgbImage::from_fn(64, 64, |x, y| {
            if drawn(x, y) {
                image::Rgb(colour(x, y))
            } else {
                image::Rgb([background; 3])
            }
        })
    };
    on(255).save(input.join("b_white.png")).unwrap();
    on(0).save(input.join("c_black.png")).unwrap();
    let out = tmp.path().join("emb.npy");
    ok(&[
        "embed",
        "--input",
        p(&input),
        "--out",
        p(&out),
        "--normalize",
    ]);
    let m = ramem_store::npy::read_f32_matrix(&out).unwrap();
    let dot =
        |i: usize, j: usize| -> f32 { m.row(i).iter().zip(m.row(j)).map(|(a, b)| a * b).sum() };
    assert!(dot(0, 1) > 0.99999, "RGBA vs white: {}", dot(0, 1));
    assert!(dot(0, 2) < 0.999, "RGBA vs black: {}", dot(0, 2));
}
