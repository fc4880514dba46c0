//! `ramem memory build` end to end: real photos and real encoders in, a memory out.

mod common;

use common::{p, ramem, unit};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ramem_store::memory::{Memory, ValueKind};
use ramem_store::npy::read_f32_matrix;

fn ok(args: &[&str]) -> Output {
    let out = ramem(args);
    assert!(
        out.status.success(),
        "ramem {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fails(args: &[&str]) -> String {
    let out = ramem(args);
    assert!(!out.status.success(), "ramem {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn photos() -> PathBuf {
    let out = ok(&["assets", "path", "sample-photos"]);
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// 4 photos, 2 sidecar captions, 1 corrupt image.
fn photo_dir(dir: &Path) -> PathBuf {
    let src = photos();
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for f in ["camera.png", "china.jpg", "flower.jpg", "rocket.jpg"] {
        std::fs::copy(src.join(f), input.join(f)).unwrap();
    }
    std::fs::write(input.join("china.txt"), "a temple in china\n").unwrap();
    std::fs::write(input.join("rocket.txt"), "a rocket on its launch pad").unwrap();
    std::fs::write(input.join("broken.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
    input
}

#[test]
fn image_directory_with_captions_and_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = photo_dir(dir.path());
    let mem = dir.path().join("mem");
    let out = ok(&[
        "memory",
        "build",
        "--memory",
        p(&mem),
        "--input",
        p(&input),
        "--values",
        "both",
        "--key-dtype",
        "f32",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.jpg"), "{stderr}");

    let memory = Memory::open(&mem).unwrap();
    assert_eq!(memory.count(), 4);
    let sources: Vec<String> = (0..4)
        .map(|i| memory.metadata(i).unwrap().source.unwrap())
        .collect();
    let names: Vec<&str> = sources
        .iter()
        .map(|s| s.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["camera.png", "china.jpg", "flower.jpg", "rocket.jpg"]
    );
    let captions: Vec<Option<String>> = (0..4)
        .map(|i| memory.metadata(i).unwrap().caption)
        .collect();
    assert_eq!(
        captions,
        [
            None,
            Some("a temple in china".to_string()),
            None,
            Some("a rocket on its launch pad".to_string())
        ]
    );

    // The same images through `ramem embed` (raw embeddings).
    let emb = dir.path().join("emb.npy");
    ok(&["embed", "--input", p(&input), "--out", p(&emb)]);
    let m = read_f32_matrix(&emb).unwrap();
    let (n, d, want) = (m.rows, m.cols, m.data);
    assert_eq!((n, d), (4, 1280));
    for i in 0..4 {
        let want = &want[i * d..(i + 1) * d];
        let key = memory.key(i as i64).unwrap();
        let norm = key.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "key {i} has norm {norm}");
        // Keys are normalised; image values are raw.
        assert!(max_diff(&key, &unit(want)) < 1e-5, "key {i}");
        let value = memory.values(ValueKind::Image, i as i64).unwrap();
        assert!(max_diff(&unit(&value), &unit(want)) < 1e-5, "value {i}");
        assert!(max_diff(&value, want) < 1e-3, "image value {i} is raw");
    }

    // Caption values equal `ramem embed-text`; uncaptioned rows embed "".
    let text = dir.path().join("captions.txt");
    std::fs::write(&text, "a temple in china\na rocket on its launch pad\n\n").unwrap();
    let text_emb = dir.path().join("text.npy");
    ok(&["embed-text", "--input", p(&text), "--out", p(&text_emb)]);
    let m = read_f32_matrix(&text_emb).unwrap();
    let (td, want) = (m.cols, m.data);
    for (row, want_row) in [(1, 0), (3, 1), (0, 2), (2, 2)] {
        let got = memory.values(ValueKind::Text, row).unwrap();
        assert!(
            max_diff(&got, &want[want_row * td..(want_row + 1) * td]) < 1e-5,
            "text value of row {row}"
        );
    }

    // --strict makes the corrupt image an error, naming it.
    let e = fails(&[
        "memory",
        "build",
        "--memory",
        p(&dir.path().join("strict")),
        "--input",
        p(&input),
        "--strict",
    ]);
    assert!(e.contains("broken.jpg"), "{e}");
}

fn add_file(builder: &mut tar::Builder<std::fs::File>, name: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, bytes).unwrap();
}

#[test]
fn webdataset_shards() {
    let dir = tempfile::tempdir().unwrap();
    let src = photos();
    let shards = dir.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(shards.join("000000.tar")).unwrap());
    add_file(
        &mut b,
        "000000.jpg",
        &std::fs::read(src.join("china.jpg")).unwrap(),
    );
    add_file(&mut b, "000000.txt", b"a temple");
    add_file(
        &mut b,
        "000001.png",
        &std::fs::read(src.join("camera.png")).unwrap(),
    );
    add_file(&mut b, "000001.json", b"{}");
    b.finish().unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(shards.join("000001.tar")).unwrap());
    add_file(&mut b, "000002.caption", b"a rocket");
    add_file(
        &mut b,
        "000002.jpg",
        &std::fs::read(src.join("rocket.jpg")).unwrap(),
    );
    b.finish().unwrap();

    // A directory of shards, and the same shards named one by one.
    let mem = dir.path().join("mem");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&mem),
        "--input",
        p(&shards),
        "--values",
        "text",
    ]);
    let mem2 = dir.path().join("mem2");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&mem2),
        "--input",
        p(&shards.join("000000.tar")),
        "--input",
        p(&shards.join("000001.tar")),
        "--values",
        "text",
    ]);
    for m in [&mem, &mem2] {
        let memory = Memory::open(m).unwrap();
        assert_eq!(memory.count(), 3);
        let rows: Vec<(String, Option<String>)> = (0..3)
            .map(|i| {
                let r = memory.metadata(i).unwrap();
                (r.source.unwrap(), r.caption)
            })
            .collect();
        assert!(rows[0].0.ends_with("000000.tar:000000"), "{rows:?}");
        assert!(rows[2].0.ends_with("000001.tar:000002"), "{rows:?}");
        let captions: Vec<_> = rows.iter().map(|r| r.1.as_deref()).collect();
        assert_eq!(captions, [Some("a temple"), None, Some("a rocket")]);
        assert!(memory.value_dim(ValueKind::Image).is_none());
        assert_eq!(memory.value_dim(ValueKind::Text), Some(384));
    }

    // Keys equal `ramem embed` of the same files.
    let flat = dir.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    for (from, to) in [
        ("china.jpg", "a.jpg"),
        ("camera.png", "b.png"),
        ("rocket.jpg", "c.jpg"),
    ] {
        std::fs::copy(src.join(from), flat.join(to)).unwrap();
    }
    let emb = dir.path().join("emb.npy");
    ok(&[
        "embed",
        "--input",
        p(&flat),
        "--out",
        p(&emb),
        "--normalize",
    ]);
    let m = read_f32_matrix(&emb).unwrap();
    let (d, want) = (m.cols, m.data);
    let memory = Memory::open(&mem).unwrap();
    for i in 0..3 {
        let key = memory.key(i as i64).unwrap();
        // f16 keys: compare at f16 precision.
        assert!(max_diff(&key, &want[i * d..(i + 1) * d]) < 1e-3, "key {i}");
    }
}

fn keys_and_metadata(mem: &Path) -> Vec<(Vec<f32>, Option<String>, Option<String>)> {
    let memory = Memory::open(mem).unwrap();
    (0..memory.count() as i64)
        .map(|i| {
            let m = memory.metadata(i).unwrap();
            (memory.key(i).unwrap(), m.source, m.caption)
        })
        .collect()
}

fn committed_rows(mem: &Path) -> u64 {
    std::fs::read(mem.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["count"].as_u64())
        .unwrap_or(0)
}

#[test]
fn killed_build_resumes_to_the_same_memory() {
    let dir = tempfile::tempdir().unwrap();
    let input = photo_dir(dir.path());
    // More photos so the kill lands mid-build.
    let src = photos();
    for f in ["chelsea.png", "coffee.png"] {
        std::fs::copy(src.join(f), input.join(f)).unwrap();
    }
    let whole = dir.path().join("whole");
    let args = |mem: &Path| -> Vec<String> {
        [
            "memory",
            "build",
            "--memory",
            p(mem),
            "--input",
            p(&input),
            "--values",
            "both",
            "--shard-rows",
            "1",
            "--threads",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole_args = args(&whole);
    ok(&whole_args.iter().map(String::as_str).collect::<Vec<_>>());

    let mem = dir.path().join("mem");
    let mem_args = args(&mem);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramem"))
        .args(&mem_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut killed_at = None;
    while start.elapsed() < Duration::from_secs(120) {
        let rows = committed_rows(&mem);
        if rows >= 1 {
            child.kill().unwrap();
            killed_at = Some(rows);
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait().unwrap();
    eprintln!("killed at {killed_at:?} committed rows");

    let out = ok(&mem_args.iter().map(String::as_str).collect::<Vec<_>>());
    if killed_at.is_some_and(|r| r < 6) {
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("resuming"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (a, b) = (keys_and_metadata(&whole), keys_and_metadata(&mem));
    assert_eq!(a.len(), 6);
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.1, y.1, "source of row {i}");
        assert_eq!(x.2, y.2, "caption of row {i}");
        assert!(max_diff(&x.0, &y.0) == 0.0, "key of row {i}");
    }

    // Killed after the state recorded the last shard but before the manifest
    // committed it: roll the manifest back one shard, as that crash leaves it.
    let manifest_path = mem.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m["shards"].as_array_mut().unwrap().pop();
    m["count"] = serde_json::json!(5);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    assert_eq!(Memory::open(&mem).unwrap().count(), 5);
    ok(&mem_args.iter().map(String::as_str).collect::<Vec<_>>());
    let c = keys_and_metadata(&mem);
    assert_eq!(c.len(), 6);
    for (i, (x, y)) in a.iter().zip(&c).enumerate() {
        assert_eq!(
            (&x.1, &x.2),
            (&y.1, &y.2),
            "metadata of row {i} after rollback"
        );
        assert!(max_diff(&x.0, &y.0) == 0.0, "key of row {i} after rollback");
    }

    // A rerun with different input is refused.
    std::fs::remove_file(input.join("coffee.png")).unwrap();
    let e = fails(&mem_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("other input"), "{e}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("mem");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = fails(&["memory", "build", "--memory", p(&mem), "--input", p(&empty)]);
    assert!(e.contains("no images found"), "{e}");

    let missing = dir.path().join("missing");
    let e = fails(&[
        "memory",
        "build",
        "--memory",
        p(&mem),
        "--input",
        p(&missing),
    ]);
    assert!(
        e.contains("missing") && e.contains("cannot read input"),
        "{e}"
    );

    let e = fails(&[
        "memory",
        "build",
        "--memory",
        p(&mem),
        "--input",
        p(&empty),
        "--values",
        "audio",
    ]);
    assert!(e.contains("audio"), "{e}");

    let fake = dir.path().join("fake.tar");
    std::fs::write(&fake, vec![b'x'; 2000]).unwrap();
    let e = fails(&["memory", "build", "--memory", p(&mem), "--input", p(&fake)]);
    assert!(
        e.contains("fake.tar") && e.contains("not a readable tar"),
        "{e}"
    );

    let short = dir.path().join("short.tar");
    std::fs::write(&short, b"hello").unwrap();
    let e = fails(&["memory", "build", "--memory", p(&mem), "--input", p(&short)]);
    assert!(e.contains("short.tar"), "{e}");

    // Nothing was created by the failures.
    assert!(!mem.exists());
}

/// Writes a parquet table of optional UTF-8 columns.
fn write_table(path: &Path, columns: &[(&str, Vec<Option<&str>>)]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let fields: String = columns
        .iter()
        .map(|(name, _)| format!("OPTIONAL BYTE_ARRAY {name} (UTF8); "))
        .collect();
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(&format!("message table {{ {fields}}}"))
            .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut group = writer.next_row_group().unwrap();
    for (_, values) in columns {
        let mut column = group.next_column().unwrap().unwrap();
        let present: Vec<ByteArray> = values
            .iter()
            .flatten()
            .map(|v| ByteArray::from(*v))
            .collect();
        let levels: Vec<i16> = values.iter().map(|v| v.is_some() as i16).collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&present, Some(&levels), None)
            .unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_table_of_paths_and_captions() {
    let dir = tempfile::tempdir().unwrap();
    let src = photos();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for f in ["coffee.png", "chelsea.png"] {
        std::fs::copy(src.join(f), images.join(f)).unwrap();
    }
    let table = dir.path().join("pairs.parquet");
    write_table(
        &table,
        &[
            (
                "image_path",
                vec![Some("images/coffee.png"), Some("images/chelsea.png")],
            ),
            ("caption", vec![Some("a cup of coffee"), None]),
        ],
    );
    let mem = dir.path().join("mem");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&mem),
        "--input",
        p(&table),
        "--values",
        "text",
    ]);
    let memory = Memory::open(&mem).unwrap();
    assert_eq!(memory.count(), 2);
    let first = memory.metadata(0).unwrap();
    assert!(first.source.unwrap().ends_with("coffee.png"));
    assert_eq!(first.caption.as_deref(), Some("a cup of coffee"));
    assert_eq!(memory.metadata(1).unwrap().caption, None);

    // A URL cannot be read here; a table without a path column says which columns it looked for.
    let urls = dir.path().join("urls.parquet");
    write_table(&urls, &[("url", vec![Some("https://example.org/x.jpg")])]);
    let e = fails(&[
        "memory",
        "build",
        "--memory",
        p(&dir.path().join("m2")),
        "--input",
        p(&urls),
    ]);
    assert!(e.contains("urls.parquet") && e.contains("URL"), "{e}");
    let no_path = dir.path().join("captions_only.parquet");
    write_table(&no_path, &[("caption", vec![Some("a cat")])]);
    let e = fails(&[
        "memory",
        "build",
        "--memory",
        p(&dir.path().join("m3")),
        "--input",
        p(&no_path),
    ]);
    assert!(
        e.contains("captions_only.parquet") && e.contains("image_path"),
        "{e}"
    );
}
