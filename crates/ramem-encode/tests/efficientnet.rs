//! EfficientNet-Lite on real weights and real photos, checked three ways:
//! the ImageNet head names the right class on the sample photos, the
//! embeddings agree with an independent numpy implementation
//! (`tests/oracles/efficientnet_lite_numpy.py`) on the same pixels, and the
//! CPU engine agrees with the candle path.
//!
//! The weights and photos come from the asset cache (`ramem assets install`,
//! run by `scripts/setup.sh`); a missing asset fails the test with the
//! command that installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use ramem_assets::Cache;
use ramem_encode::efficientnet::{Backend, EfficientNetLite, LiteVariant};
use ramem_encode::preprocess::{preprocess_file, PreprocessSpec};
use ramem_encode::weights::convert_legacy_to_safetensors;

mod common;

use common::{assert_known_classes, KNOWN_PHOTOS};

fn cache() -> Cache {
    Cache::from_env().expect("asset cache location")
}

/// Converts the installed checkpoint into `dir` and loads it.
fn load(variant: LiteVariant, dir: &Path) -> EfficientNetLite {
    let pth = cache()
        .efficientnet_lite_pth(variant.index())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let st = dir.join(format!("{}.safetensors", variant.name()));
    convert_legacy_to_safetensors(&pth, &st).expect("convert checkpoint");
    EfficientNetLite::load(&st, variant, &Device::Cpu).expect("load converted weights")
}

fn photo(name: &str) -> PathBuf {
    let dir = cache()
        .sample_photos_dir()
        .unwrap_or_else(|e| panic!("{e:#}"));
    dir.join(name)
}

fn pixels(model: &EfficientNetLite, names: &[&str]) -> Tensor {
    let spec = PreprocessSpec::efficientnet_lite(model.resolution() as u32);
    let mut data = Vec::new();
    for n in names {
        data.extend(preprocess_file(&photo(n), &spec).expect("preprocess photo"));
    }
    let s = model.resolution();
    Tensor::from_vec(data, (names.len(), 3, s, s), &Device::Cpu).unwrap()
}

fn top1(logits: &Tensor) -> Vec<usize> {
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    rows.iter()
        .map(|r| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn lite0_names_the_sample_photos() {
    let dir = tempfile::tempdir().unwrap();
    let model = load(LiteVariant::Lite0, dir.path());
    let out = model.forward(&pixels(&model, &KNOWN_PHOTOS)).unwrap();
    assert_eq!(out.embedding.dims(), [4, 1280]);
    assert_eq!(out.logits.dims(), [4, 1000]);
    assert_known_classes(&top1(&out.logits), "lite0");
    // The other sample photos run through without trouble (one image: the
    // single-image path parallelises inside the matrix products instead).
    for name in [
        "astronaut.png",
        "rocket.jpg",
        "motorcycle.png",
        "camera.png",
    ] {
        let out = model.forward(&pixels(&model, &[name])).unwrap();
        let e: Vec<f32> = out.embedding.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            e.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{name}: embedding after ReLU6 is finite and >= 0"
        );
    }
}

#[test]
fn lite1_and_lite2_name_the_sample_photos() {
    let dir = tempfile::tempdir().unwrap();
    for variant in [LiteVariant::Lite1, LiteVariant::Lite2] {
        let model = load(variant, dir.path());
        let out = model.forward(&pixels(&model, &KNOWN_PHOTOS)).unwrap();
        let top = top1(&out.logits);
        // Lite1 and Lite2 call flower.jpg (a close-up with a bee) a honeycomb (599);
        // the numpy oracle with Pillow's preprocessing agrees, so only the other three are checked.
        assert_known_classes(&[top[0], top[1], top[2], 985], variant.name());
    }
}

#[test]
fn cpu_engine_and_candle_path_agree() {
    let dir = tempfile::tempdir().unwrap();
    let model = load(LiteVariant::Lite0, dir.path());
    let x = pixels(&model, &["chelsea.png", "rocket.jpg"]);
    let fast = model.forward_with(&x, Backend::CpuEngine).unwrap();
    let reference = model.forward_with(&x, Backend::Candle).unwrap();
    let d = max_abs_diff(&fast.embedding, &reference.embedding);
    assert!(d < 1e-4, "embeddings differ by {d}");
    let d = max_abs_diff(&fast.logits, &reference.logits);
    assert!(d < 1e-3, "logits differ by {d}");
}

/// Writes a float32 (N, 3, H, W) array as .npy (small and local: the oracle
/// test must not depend on the crate it checks).
#[test]
fn an_image_embeds_to_the_same_bits_alone_in_a_batch_and_on_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = load(LiteVariant::Lite0, dir.path());
    let batch = pixels(&model, &KNOWN_PHOTOS);
    let together: Vec<Vec<f32>> = model.forward(&batch).unwrap().embedding.to_vec2().unwrap();
    let alone = |threads: usize, i: usize| -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let one = batch.narrow(0, i, 1).unwrap();
        pool.install(|| model.forward(&one).unwrap().embedding.to_vec2().unwrap())
            .remove(0)
    };
    for (i, row) in together.iter().enumerate() {
        // One image spreads its matrix products over the threads in bands
        // of rows, each computed as one thread computes it.
        for threads in [1, 2, 3] {
            assert!(
                &alone(threads, i) == row,
                "{}: alone on {threads} threads differs from the batch",
                KNOWN_PHOTOS[i]
            );
        }
    }
}

fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for v in data {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).unwrap();
    assert!(
        header.contains("'<f4'"),
        "oracle output must be float32: {header}"
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = bytes[start + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data)
}

#[test]
fn embeddings_match_the_numpy_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let model = load(LiteVariant::Lite0, dir.path());
    // Real photos already at 224 x 224 after preprocessing, plus one image of
    // deterministic pseudo-random pixels: the network sees identical inputs.
    let photos = pixels(&model, &["chelsea.png", "coffee.png"]);
    let mut state = 0x2545f4914f6cdd1du64;
    let noise: Vec<f32> = (0..3 * 224 * 224)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    let noise = Tensor::from_vec(noise, (1, 3, 224, 224), &Device::Cpu).unwrap();
    let x = Tensor::cat(&[&photos, &noise], 0).unwrap();
    let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let pix = dir.path().join("pixels.npy");
    write_npy_f32(&pix, &[3, 3, 224, 224], &flat);

    let oracle =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/efficientnet_lite_numpy.py");
    let (emb_path, logit_path) = (dir.path().join("emb.npy"), dir.path().join("logits.npy"));
    let pth = cache().efficientnet_lite_pth(0).unwrap();
    let status = Command::new("python3")
        .arg(&oracle)
        .args(["--weights".as_ref(), pth.as_os_str()])
        .args(["--pixels".as_ref(), pix.as_os_str()])
        .args(["--out-embedding".as_ref(), emb_path.as_os_str()])
        .args(["--out-logits".as_ref(), logit_path.as_os_str()])
        .status()
        .expect("python3 is needed for the oracle (and numpy: pip install numpy)");
    assert!(
        status.success(),
        "the numpy oracle failed; is numpy installed? (pip install numpy)"
    );
    let (shape, oracle_emb) = read_npy_f32(&emb_path);
    assert_eq!(shape, [3, 1280]);
    let oracle_emb = Tensor::from_vec(oracle_emb, (3, 1280), &Device::Cpu).unwrap();
    let (_, oracle_logits) = read_npy_f32(&logit_path);
    let oracle_logits = Tensor::from_vec(oracle_logits, (3, 1000), &Device::Cpu).unwrap();

    for backend in [Backend::CpuEngine, Backend::Candle] {
        let out = model.forward_with(&x, backend).unwrap();
        let d = max_abs_diff(&out.embedding, &oracle_emb);
        eprintln!("{backend:?}: max |embedding - oracle| = {d:e}");
        assert!(
            d < 1e-3,
            "{backend:?}: embeddings differ from the oracle by {d}"
        );
        let d = max_abs_diff(&out.logits, &oracle_logits);
        assert!(
            d < 1e-2,
            "{backend:?}: logits differ from the oracle by {d}"
        );
    }
}

#[test]
fn bad_weight_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pth = cache().efficientnet_lite_pth(0).unwrap();
    let bytes = std::fs::read(&pth).unwrap();
    let err = |path: &Path| {
        format!(
            "{:#}",
            convert_legacy_to_safetensors(path, &dir.path().join("out.safetensors")).unwrap_err()
        )
    };

    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&truncated);
    assert!(
        e.contains("truncated.pth") && e.contains("truncated"),
        "{e}"
    );

    let header_only = dir.path().join("header.pth");
    std::fs::write(&header_only, &bytes[..100]).unwrap();
    let e = err(&header_only);
    assert!(e.contains("header.pth"), "{e}");

    let zip = dir.path().join("new-format.pth");
    std::fs::write(&zip, b"PK\x03\x04rest of a zip archive").unwrap();
    let e = err(&zip);
    assert!(e.contains("zip") && e.contains("legacy"), "{e}");

    let text = dir.path().join("notes.pth");
    std::fs::write(&text, b"hello").unwrap();
    assert!(err(&text).contains("not a legacy PyTorch checkpoint"));

    let missing = dir.path().join("missing.pth");
    assert!(err(&missing).contains("missing.pth"));
    assert!(
        !dir.path().join("out.safetensors").exists(),
        "no output is left behind after a failure"
    );

    // A valid safetensors file of another network.
    let other = dir.path().join("other.safetensors");
    let t = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("w".to_string(), t)]),
        &other,
    )
    .unwrap();
    let e = format!(
        "{:#}",
        EfficientNetLite::load(&other, LiteVariant::Lite0, &Device::Cpu)
            .err()
            .unwrap()
    );
    assert!(
        e.contains("other.safetensors")
            && e.contains("EfficientNet-Lite")
            && e.contains("_conv_stem"),
        "{e}"
    );
}

#[test]
fn wrong_input_shape_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = load(LiteVariant::Lite0, dir.path());
    let grey = Tensor::zeros((1, 1, 224, 224), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = model.forward(&grey).err().unwrap().to_string();
    assert!(e.contains("1 channels"), "{e}");
}
