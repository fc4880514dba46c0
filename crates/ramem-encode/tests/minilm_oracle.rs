//! Checks `SentenceEncoder` on the real all-MiniLM-L6-v2 weights against an
//! independent numpy implementation (`tests/oracles/minilm_numpy.py`: its own
//! WordPiece tokenizer, safetensors reader and BERT forward pass in float64).
//!
//! The model directory comes from `RAMEM_MINILM_DIR`, else the asset cache
//! (`ramem assets install minilm-l6`). Without it these tests fail and say how
//! to install it: they never pass silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use ramem_encode::text::{Pooling, SentenceEncoder};

fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAMEM_MINILM_DIR") {
        return PathBuf::from(dir);
    }
    ramem_assets::Cache::from_env()
        .and_then(|cache| cache.minilm_dir())
        .unwrap_or_else(|e| panic!("{e:#} (or set RAMEM_MINILM_DIR)"))
}

fn long_caption() -> String {
    // About 330 WordPiece tokens: past max_seq_length (256), so truncated.
    let sentence = "a small brown dog runs quickly across the green field chasing a red ball";
    vec![sentence; 22].join(", and then ")
}

fn captions() -> Vec<String> {
    let mut c: Vec<String> = [
        "A cat sitting on a mat.",
        "",
        "dog",
        "A PHOTO OF A RED SPORTS CAR PARKED ON THE STREET",
        "Café crème brûlée served at a naïve façade in Zürich",
        "3 dogs & 2.5 cats @ 10:30pm, costing $1,299.99 (approx.)",
        "unbelievably hyperparameterized transformers",
        "Hello!!! What's up??? -- nothing... ;-)",
        "an astronaut riding a horse on the moon",
        "  leading and trailing   whitespace\tand\ttabs  ",
        "multi\nline\ncaption",
        "El niño juega con la pelota en el jardín",
        "Ein Hund läuft über die Straße",
        "a close-up of a bird's nest with three blue eggs",
        "the year 2024 had 366 days; 1984 was a novel",
        "x",
        "ÉCOLE ÉLÉMENTAIRE",
        "a bowl of ramen, chopsticks and a glass of water",
        "pixel-art sprite of a knight in armour",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    c.push(long_caption());
    assert_eq!(c.len(), 20);
    c
}

/// Reads a little-endian `.npy` holding a 2-D C-order float matrix.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{} is not a .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'fortran_order': False"),
        "unexpected header {header}"
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no shape in header {header}"));
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data = &bytes[start + header_len..];
    let values: Vec<f64> = if header.contains("'descr': '<f8'") {
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    } else if header.contains("'descr': '<f4'") {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect()
    } else {
        panic!("unsupported dtype in header {header}");
    };
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (shape, values)
}

/// What the numpy reference computed: its token ids and its (N, 384) output.
struct Reference {
    ids: Vec<Vec<u32>>,
    shape: Vec<usize>,
    values: Vec<f64>,
}

/// Runs the numpy reference on `texts`.
fn numpy_reference(dir: &Path, texts: &[String]) -> Reference {
    let tmp = tempfile::tempdir().unwrap();
    let captions = tmp.path().join("captions.json");
    std::fs::write(&captions, serde_json::to_string(texts).unwrap()).unwrap();
    let out = tmp.path().join("out.npy");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/minilm_numpy.py");
    let result = Command::new("python3")
        .arg(&script)
        .arg("--model-dir")
        .arg(dir)
        .arg("--captions")
        .arg(&captions)
        .arg("--out")
        .arg(&out)
        .arg("--print-ids")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Python 3, then `pip install numpy`")
        });
    let stderr = String::from_utf8_lossy(&result.stderr);
    if result.status.code() == Some(3) || stderr.contains("No module named 'numpy'") {
        panic!("the numpy reference needs numpy: pip install numpy\n{stderr}");
    }
    assert!(
        result.status.success(),
        "numpy reference failed ({}):\n{stderr}",
        result.status
    );
    let ids = String::from_utf8_lossy(&result.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad id line {l:?}: {e}")))
        .collect();
    let (shape, values) = read_npy(&out);
    Reference { ids, shape, values }
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn matches_numpy_reference() {
    let dir = model_dir();
    let mut enc = SentenceEncoder::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(enc.dim(), 384);
    assert_eq!(enc.max_len(), 256);
    assert_eq!(enc.pooling(), Pooling::Mean);

    let texts = captions();
    let long_ids = enc.token_ids(&texts[19]).unwrap();
    assert_eq!(long_ids.len(), 256, "the long caption must be truncated");
    assert_eq!((long_ids[0], long_ids[255]), (101, 102), "[CLS] ... [SEP]");
    assert_eq!(enc.token_ids("").unwrap(), vec![101, 102]);

    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Small batches: several forward passes, each padded differently.
    enc.set_batch_size(6);
    let got = enc.embed(&refs).unwrap();
    assert_eq!(got.dims(), &[20, 384]);
    let got = rows(&got);

    let reference = numpy_reference(&dir, &texts);
    // The two tokenizers (tokenizer.json in Rust, vocab.txt WordPiece in
    // Python) must agree before the vectors can.
    assert_eq!(reference.ids.len(), texts.len());
    for (text, want_ids) in texts.iter().zip(&reference.ids) {
        assert_eq!(
            &enc.token_ids(text).unwrap(),
            want_ids,
            "token ids of {text:?}"
        );
    }
    assert_eq!(reference.shape, vec![20, 384]);
    let want = &reference.values;
    let mut max_diff = 0f64;
    for (i, row) in got.iter().enumerate() {
        let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {i} has norm {norm}");
        for (j, v) in row.iter().enumerate() {
            max_diff = max_diff.max((*v as f64 - want[i * 384 + j]).abs());
        }
    }
    eprintln!("max |rust - numpy| over 20 x 384 values: {max_diff:.3e}");
    assert!(max_diff < 1e-4, "max abs difference {max_diff} >= 1e-4");
}

#[test]
fn batching_does_not_change_embeddings() {
    let enc = SentenceEncoder::load(&model_dir(), &Device::Cpu).unwrap();
    let texts = captions();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let together = rows(&enc.embed(&refs).unwrap());
    let alone: Vec<Vec<f32>> = refs
        .iter()
        .map(|t| rows(&enc.embed(&[t]).unwrap()).remove(0))
        .collect();
    let diff = max_abs_diff(&together, &alone);
    assert!(diff < 1e-5, "batched vs one-by-one differ by {diff}");

    // Same captions, reversed: rows come back in input order.
    let reversed: Vec<&str> = refs.iter().rev().copied().collect();
    let mut back = rows(&enc.embed(&reversed).unwrap());
    back.reverse();
    assert!(max_abs_diff(&together, &back) < 1e-5);

    // Related captions are closer than unrelated ones.
    let sims = rows(
        &enc.embed(&[
            "a cat on a mat",
            "a kitten lying on a rug",
            "stock market crash",
        ])
        .unwrap(),
    );
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(dot(&sims[0], &sims[1]) > dot(&sims[0], &sims[2]) + 0.2);
}

#[test]
fn encoder_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SentenceEncoder>();
}

#[test]
fn empty_input_gives_empty_matrix() {
    let enc = SentenceEncoder::load(&model_dir(), &Device::Cpu).unwrap();
    let out = enc.embed(&[]).unwrap();
    assert_eq!(out.dims(), &[0, 384]);
}

/// A copy of the model directory whose large files are links to the real ones.
fn linked_copy(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(dir.join(name), tmp.path().join(name)).unwrap();
    }
    std::fs::create_dir(tmp.path().join("1_Pooling")).unwrap();
    std::fs::copy(
        dir.join("1_Pooling/config.json"),
        tmp.path().join("1_Pooling/config.json"),
    )
    .unwrap();
    tmp
}

fn load_err(dir: &Path) -> String {
    let msg = format!(
        "{:#}",
        SentenceEncoder::load(dir, &Device::Cpu).expect_err("load should fail")
    );
    eprintln!("expected error: {msg}");
    msg
}

#[test]
fn bad_model_directories_give_clear_errors() {
    let dir = model_dir();

    let msg = load_err(Path::new("/nonexistent/minilm"));
    assert!(msg.contains("ramem assets install minilm-l6"), "{msg}");

    let tmp = linked_copy(&dir);
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("tokenizer.json") && msg.contains("missing"),
        "{msg}"
    );

    // A config that disagrees with the weights.
    let tmp = linked_copy(&dir);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        config.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1000"),
    )
    .unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("do not match") && msg.contains("model.safetensors"),
        "{msg}"
    );

    // Broken JSON.
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("parsing JSON") && msg.contains("config.json"),
        "{msg}"
    );

    // An unsupported pooling mode.
    let tmp = linked_copy(&dir);
    std::fs::write(
        tmp.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_max_tokens": true}"#,
    )
    .unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("pooling_mode_max_tokens"), "{msg}");

    // CLS pooling is supported and gives a different vector than mean pooling.
    std::fs::write(
        tmp.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true}"#,
    )
    .unwrap();
    let cls = SentenceEncoder::load(tmp.path(), &Device::Cpu).unwrap();
    assert_eq!(cls.pooling(), Pooling::Cls);
    assert_eq!(cls.max_len(), 512, "no sentence_bert_config.json: 512");
    let mean = SentenceEncoder::load(&dir, &Device::Cpu).unwrap();
    let a = rows(&cls.embed(&["a dog"]).unwrap());
    let b = rows(&mean.embed(&["a dog"]).unwrap());
    assert!(max_abs_diff(&a, &b) > 1e-3);
}

/// Throughput on ~1000 short captions in batches of 64:
/// `cargo test -p ramem-encode --release --test minilm_oracle -- --ignored --nocapture`
#[test]
#[ignore = "timing, run by hand"]
fn throughput() {
    let enc = SentenceEncoder::load(&model_dir(), &Device::Cpu).unwrap();
    let subjects = ["cat", "dog", "red car", "old man", "bowl of soup", "tree"];
    let places = [
        "on a sofa",
        "in the park",
        "at night",
        "by the sea",
        "in snow",
    ];
    let texts: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "a photo of a {} {} number {i}",
                subjects[i % subjects.len()],
                places[(i / 7) % places.len()]
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    enc.embed(&refs[..64]).unwrap(); // warm-up
    let start = Instant::now();
    let out = enc.embed(&refs).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(out.dims(), &[1000, 384]);
    eprintln!(
        "SentenceEncoder: {} captions in {secs:.2} s = {:.0} captions/s",
        refs.len(),
        refs.len() as f64 / secs
    );
}
