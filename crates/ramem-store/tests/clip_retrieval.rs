//! Importing a clip-retrieval output folder (img_emb/, text_emb/, metadata/
//! with snappy parquet): rows, values and metadata land in numeric file
//! order; mismatched files are named; an import resumes after new sets.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use ramem_store::memory::{
    clip_retrieval_sets, import_clip_retrieval, FloatDtype, ImportOptions, Memory, ValueKind,
};
use ramem_store::npy::write_f32_matrix;

const DIM: usize = 8;
const TEXT_DIM: usize = 4;

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

/// Writes a snappy-compressed parquet file of optional UTF-8 columns.
fn write_parquet(path: &Path, columns: &[(&str, Vec<Option<&str>>)]) {
    let fields: String = columns
        .iter()
        .map(|(name, _)| format!("OPTIONAL BYTE_ARRAY {name} (UTF8); "))
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {fields}}}")).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for (_, values) in columns {
        let mut column = group.next_column().unwrap().unwrap();
        let levels: Vec<i16> = values.iter().map(|v| i16::from(v.is_some())).collect();
        let data: Vec<ByteArray> = values
            .iter()
            .flatten()
            .map(|s| ByteArray::from(*s))
            .collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&data, Some(&levels), None)
            .unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

struct Set {
    index: u64,
    img: Vec<f32>,
    text: Vec<f32>,
}

/// Writes set `index` of `n` rows: embeddings, and metadata with a `url`
/// column (or `image_path` when `by_path`), a caption and an extra column.
fn write_set(dir: &Path, index: u64, n: usize, by_path: bool) -> Set {
    for sub in ["img_emb", "text_emb", "metadata"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let img = rows(n, DIM, 10 + index);
    let text = rows(n, TEXT_DIM, 100 + index);
    write_f32_matrix(
        dir.join(format!("img_emb/img_emb_{index}.npy")),
        n,
        DIM,
        &img,
    )
    .unwrap();
    write_f32_matrix(
        dir.join(format!("text_emb/text_emb_{index}.npy")),
        n,
        TEXT_DIM,
        &text,
    )
    .unwrap();
    let sources: Vec<String> = (0..n)
        .map(|r| format!("http://x/{index}/{r}.jpg"))
        .collect();
    let captions: Vec<String> = (0..n).map(|r| format!("set {index} row {r}")).collect();
    let source_col = if by_path { "image_path" } else { "url" };
    write_parquet(
        &dir.join(format!("metadata/metadata_{index}.parquet")),
        &[
            ("key", (0..n).map(|_| Some("k")).collect()),
            (
                source_col,
                sources.iter().map(|s| Some(s.as_str())).collect(),
            ),
            (
                "caption",
                // The last caption of each set is null.
                captions
                    .iter()
                    .enumerate()
                    .map(|(r, c)| (r + 1 < n).then_some(c.as_str()))
                    .collect(),
            ),
        ],
    );
    Set { index, img, text }
}

fn options() -> ImportOptions {
    ImportOptions {
        key_encoder: "clip-vit-b32".into(),
        image_encoder: "clip-vit-b32".into(),
        text_encoder: "clip-vit-b32-text".into(),
        ..ImportOptions::default()
    }
}

fn import(
    mem: &Path,
    layout: &Path,
    shard_rows: usize,
) -> ramem_store::Result<ramem_store::memory::ImportReport> {
    import_clip_retrieval(mem, layout, &options(), shard_rows, &mut |_| {})
}

fn check_memory(mem: &Path, sets: &[Set]) {
    let memory = Memory::open(mem).unwrap();
    let total: usize = sets.iter().map(|s| s.img.len() / DIM).sum();
    assert_eq!(memory.count(), total as u64);
    assert_eq!(memory.key_dtype(), FloatDtype::F16);
    assert_eq!(memory.value_dim(ValueKind::Image), Some(DIM));
    assert_eq!(memory.value_dim(ValueKind::Text), Some(TEXT_DIM));
    let mut id = 0i64;
    for set in sets {
        let n = set.img.len() / DIM;
        for r in 0..n {
            let img = &set.img[r * DIM..(r + 1) * DIM];
            let norm = img.iter().map(|v| v * v).sum::<f32>().sqrt();
            for (k, v) in memory.key(id).unwrap().iter().zip(img) {
                assert!((k - v / norm).abs() < 2e-3, "key of row {id}");
            }
            assert_eq!(memory.values(ValueKind::Image, id).unwrap(), img);
            assert_eq!(
                memory.values(ValueKind::Text, id).unwrap(),
                &set.text[r * TEXT_DIM..(r + 1) * TEXT_DIM]
            );
            let meta = memory.metadata(id).unwrap();
            assert_eq!(
                meta.source.as_deref(),
                Some(format!("http://x/{}/{r}.jpg", set.index).as_str())
            );
            let caption = (r + 1 < n).then(|| format!("set {} row {r}", set.index));
            assert_eq!(meta.caption, caption, "caption of row {id}");
            id += 1;
        }
    }
}

#[test]
fn imports_sets_in_numeric_order_with_values_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("emb");
    // Numbers 2 and 10: text order would put 10 first.
    let a = write_set(&layout, 2, 3, false);
    let b = write_set(&layout, 10, 2, true);
    let found = clip_retrieval_sets(&layout).unwrap();
    assert_eq!(
        found.iter().map(|s| s.index).collect::<Vec<_>>(),
        vec![2, 10]
    );
    let mem = tmp.path().join("mem");
    let report = import(&mem, &layout, 2).unwrap();
    assert_eq!((report.rows, report.imported, report.skipped), (5, 5, 0));
    // Shards never span two sets: 2 + 1 rows, then 2.
    assert_eq!(report.shards_written, 3);
    check_memory(&mem, &[a, b]);
    let m = Memory::open(&mem).unwrap();
    assert_eq!(m.manifest().key.encoder, "clip-vit-b32");
    assert_eq!(
        m.manifest().values.text.as_ref().unwrap().encoder,
        "clip-vit-b32-text"
    );
    // Rerunning a finished import writes nothing.
    let again = import(&mem, &layout, 2).unwrap();
    assert_eq!(
        (again.skipped, again.imported, again.shards_written),
        (5, 0, 0)
    );
}

#[test]
fn resumes_when_more_sets_arrive_and_matches_a_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (partial, full) = (tmp.path().join("partial"), tmp.path().join("full"));
    write_set(&partial, 0, 3, false);
    let mem = tmp.path().join("mem");
    assert_eq!(import(&mem, &partial, 2).unwrap().imported, 3);
    let a = write_set(&partial, 1, 2, false);
    let report = import(&mem, &partial, 2).unwrap();
    assert_eq!((report.skipped, report.imported), (3, 2));

    write_set(&full, 0, 3, false);
    write_set(&full, 1, 2, false);
    let mem2 = tmp.path().join("mem2");
    import(&mem2, &full, 2).unwrap();
    for shard in ["shard-000000", "shard-000001", "shard-000002"] {
        for file in [
            "keys.npy",
            "image_values.npy",
            "text_values.npy",
            "metadata.jsonl",
        ] {
            assert_eq!(
                std::fs::read(mem.join(shard).join(file)).unwrap(),
                std::fs::read(mem2.join(shard).join(file)).unwrap(),
                "{shard}/{file}"
            );
        }
    }
    assert_eq!(a.index, 1);
}

#[test]
fn mismatched_or_missing_files_are_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("emb");
    write_set(&layout, 0, 3, false);
    write_set(&layout, 1, 2, false);
    let mem = tmp.path().join("mem");
    let text1 = layout.join("text_emb/text_emb_1.npy");

    // text_emb_1 has 3 rows where img_emb_1 has 2.
    write_f32_matrix(&text1, 3, TEXT_DIM, &rows(3, TEXT_DIM, 5)).unwrap();
    let err = import(&mem, &layout, 2).unwrap_err().to_string();
    assert!(
        err.contains("text_emb_1.npy") && err.contains("img_emb_1.npy"),
        "{err}"
    );
    assert!(!mem.exists());
    write_f32_matrix(&text1, 2, TEXT_DIM, &rows(2, TEXT_DIM, 5)).unwrap();

    // metadata_0 has 2 rows where img_emb_0 has 3.
    let meta0 = layout.join("metadata/metadata_0.parquet");
    write_parquet(&meta0, &[("url", vec![Some("a"), Some("b")])]);
    let err = import(&mem, &layout, 2).unwrap_err().to_string();
    assert!(
        err.contains("metadata_0.parquet") && err.contains("2 rows"),
        "{err}"
    );
    std::fs::write(&meta0, b"not parquet").unwrap();
    let err = import(&mem, &layout, 2).unwrap_err().to_string();
    assert!(
        err.contains("metadata_0.parquet") && err.contains("parquet"),
        "{err}"
    );
    assert!(!mem.exists());
    std::fs::remove_file(&meta0).unwrap();
    let err = import(&mem, &layout, 2).unwrap_err().to_string();
    assert!(
        err.contains("metadata_0.parquet") && err.contains("missing"),
        "{err}"
    );

    // A text file without image embeddings; a different width.
    write_set(&layout, 0, 3, false);
    write_f32_matrix(
        layout.join("text_emb/text_emb_7.npy"),
        1,
        TEXT_DIM,
        &rows(1, TEXT_DIM, 1),
    )
    .unwrap();
    let err = import(&mem, &layout, 2).unwrap_err().to_string();
    assert!(
        err.contains("text_emb_7.npy") && err.contains("img_emb_7.npy"),
        "{err}"
    );
    std::fs::remove_file(layout.join("text_emb/text_emb_7.npy")).unwrap();
    write_f32_matrix(
        layout.join("img_emb/img_emb_1.npy"),
        2,
        DIM + 1,
        &rows(2, DIM + 1, 1),
    )
    .unwrap();
    let err = import(&mem, &layout, 2).unwrap_err().to_string();
    assert!(err.contains("img_emb_1.npy"), "{err}");
    assert!(!mem.exists());

    // No img_emb folder at all.
    let err = import(&mem, tmp.path(), 2).unwrap_err().to_string();
    assert!(err.contains("img_emb"), "{err}");
    assert!(!mem.exists());
}

#[test]
fn output_without_text_or_metadata_folders_imports_keys_and_image_values() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("emb");
    std::fs::create_dir_all(layout.join("img_emb")).unwrap();
    write_f32_matrix(
        layout.join("img_emb/img_emb_0.npy"),
        4,
        DIM,
        &rows(4, DIM, 3),
    )
    .unwrap();
    let mem = tmp.path().join("mem");
    import(&mem, &layout, 10).unwrap();
    let memory = Memory::open(&mem).unwrap();
    assert_eq!(memory.count(), 4);
    assert_eq!(memory.value_dim(ValueKind::Text), None);
    assert_eq!(memory.metadata(3).unwrap().source, None);
}

#[test]
fn source_is_the_url_else_the_image_path() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("emb");
    std::fs::create_dir_all(layout.join("img_emb")).unwrap();
    std::fs::create_dir_all(layout.join("metadata")).unwrap();
    write_f32_matrix(
        layout.join("img_emb/img_emb_0.npy"),
        3,
        DIM,
        &rows(3, DIM, 3),
    )
    .unwrap();
    write_parquet(
        &layout.join("metadata/metadata_0.parquet"),
        &[
            ("image_path", vec![Some("a.jpg"), Some("b.jpg"), None]),
            ("url", vec![None, Some("http://b"), None]),
        ],
    );
    let mem = tmp.path().join("mem");
    import(&mem, &layout, 10).unwrap();
    let memory = Memory::open(&mem).unwrap();
    let sources: Vec<Option<String>> = (0..3).map(|i| memory.metadata(i).unwrap().source).collect();
    assert_eq!(
        sources,
        vec![Some("a.jpg".into()), Some("http://b".into()), None]
    );
    assert_eq!(memory.metadata(0).unwrap().caption, None);
}

/// `import_npy` takes its metadata from a parquet too (source from `path`
/// here, caption from `caption`), and resumes through it.
#[test]
fn import_npy_reads_parquet_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.npy");
    write_f32_matrix(&keys, 5, DIM, &rows(5, DIM, 41)).unwrap();
    let meta = dir.path().join("meta.parquet");
    write_parquet(
        &meta,
        &[
            (
                "path",
                vec![
                    Some("a.jpg"),
                    Some("b.jpg"),
                    None,
                    Some("d.jpg"),
                    Some("e.jpg"),
                ],
            ),
            (
                "caption",
                vec![
                    Some("a cat"),
                    None,
                    Some("a dog"),
                    Some("a mug"),
                    Some("a tree"),
                ],
            ),
        ],
    );
    let mem = dir.path().join("mem");
    let import = |shard_rows| {
        ramem_store::memory::import_npy(
            &mem,
            &keys,
            None,
            None,
            Some(&meta),
            &options(),
            shard_rows,
        )
    };
    import(2).unwrap();
    let memory = Memory::open(&mem).unwrap();
    assert_eq!(memory.count(), 5);
    let got: Vec<(Option<String>, Option<String>)> = (0..5)
        .map(|i| {
            let m = memory.metadata(i).unwrap();
            (m.source, m.caption)
        })
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        [
            (s("a.jpg"), s("a cat")),
            (s("b.jpg"), None),
            (None, s("a dog")),
            (s("d.jpg"), s("a mug")),
            (s("e.jpg"), s("a tree")),
        ]
    );
    // Rerunning finds everything committed; a parquet of the wrong length is named.
    assert_eq!(import(2).unwrap().imported, 0);
    let short = dir.path().join("short.parquet");
    write_parquet(&short, &[("path", vec![Some("a.jpg")])]);
    let e = ramem_store::memory::import_npy(
        &dir.path().join("mem2"),
        &keys,
        None,
        None,
        Some(&short),
        &options(),
        2,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("short.parquet") && e.contains("1 metadata rows"),
        "{e}"
    );
}
