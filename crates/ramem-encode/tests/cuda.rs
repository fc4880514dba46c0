//! The `cuda` feature on a GPU: EfficientNet-Lite0 on CUDA names the sample
//! photos as on the CPU, its embeddings agree with the CPU engine's, and how
//! many images a second each device encodes.
//!
//! Built only with `--features cuda`, and then meant for a machine with an
//! NVIDIA GPU: without one every test here fails (on purpose) rather than
//! passing vacuously. The weights and photos come from the asset cache
//! (`RAMEM_HOME`). Build and run notes: docs/GPU.md.

#![cfg(feature = "cuda")]

use std::time::Instant;

use candle_core::{Device, Tensor};
use ramem_assets::Cache;
use ramem_encode::efficientnet::{EfficientNetLite, LiteVariant};
use ramem_encode::preprocess::{preprocess_file, PreprocessSpec};
use ramem_encode::weights::convert_legacy_to_safetensors;

mod common;

use common::{assert_known_classes, KNOWN_PHOTOS};

/// CUDA device 0, or a failure that says what is missing.
fn cuda() -> Device {
    match Device::new_cuda(0) {
        Ok(device) => device,
        Err(e) => panic!(
            "built with the `cuda` feature but CUDA device 0 cannot be opened: {e}\n\
             These tests need an NVIDIA GPU and its driver (libcuda.so.1); see docs/GPU.md."
        ),
    }
}

/// `KNOWN_PHOTOS` first, then four more.
const PHOTOS: [&str; 8] = [
    KNOWN_PHOTOS[0],
    KNOWN_PHOTOS[1],
    KNOWN_PHOTOS[2],
    KNOWN_PHOTOS[3],
    "astronaut.png",
    "rocket.jpg",
    "motorcycle.png",
    "camera.png",
];

/// Lite0 on the CPU and on CUDA, from the same converted checkpoint.
fn models(dir: &std::path::Path) -> (EfficientNetLite, EfficientNetLite) {
    let cache = Cache::from_env().expect("asset cache location");
    let pth = cache
        .efficientnet_lite_pth(0)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let st = dir.join("efficientnet-lite0.safetensors");
    convert_legacy_to_safetensors(&pth, &st).expect("convert checkpoint");
    let cpu = EfficientNetLite::load(&st, LiteVariant::Lite0, &Device::Cpu).expect("load on cpu");
    let gpu = EfficientNetLite::load(&st, LiteVariant::Lite0, &cuda()).expect("load on cuda");
    (cpu, gpu)
}

fn photo_pixels() -> Vec<f32> {
    let dir = Cache::from_env()
        .expect("asset cache location")
        .sample_photos_dir()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let spec = PreprocessSpec::efficientnet_lite(224);
    let mut data = Vec::new();
    for name in PHOTOS {
        data.extend(preprocess_file(&dir.join(name), &spec).expect("preprocess photo"));
    }
    data
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_device(&Device::Cpu).unwrap().to_vec2().unwrap()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap()
}

#[test]
fn lite0_on_cuda_agrees_with_the_cpu_engine_on_real_photos() {
    let dir = tempfile::tempdir().unwrap();
    let (cpu, gpu) = models(dir.path());
    let pixels = photo_pixels();
    let n = PHOTOS.len();
    let on = |model: &EfficientNetLite| {
        let x = Tensor::from_slice(&pixels, (n, 3, 224, 224), model.device()).unwrap();
        let out = model.forward(&x).unwrap();
        (rows(&out.embedding), rows(&out.logits))
    };
    let (cpu_embedding, cpu_logits) = on(&cpu);
    let (gpu_embedding, gpu_logits) = on(&gpu);
    let max_diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let embedding_diff = max_diff(&cpu_embedding, &gpu_embedding);
    let logit_diff = max_diff(&cpu_logits, &gpu_logits);
    let cpu_top: Vec<usize> = cpu_logits.iter().map(|r| argmax(r)).collect();
    let gpu_top: Vec<usize> = gpu_logits.iter().map(|r| argmax(r)).collect();
    println!(
        "cuda: lite0 on {n} photos, max |cpu - cuda| embedding {embedding_diff:.3e}, \
         logits {logit_diff:.3e}; top-1 cpu {cpu_top:?} cuda {gpu_top:?}"
    );
    // Embeddings are means of ReLU6 outputs (0..6); f32 convolutions summed
    // in another order agree far closer than this.
    assert!(
        embedding_diff < 1e-3,
        "embeddings differ by {embedding_diff}"
    );
    assert!(logit_diff < 1e-2, "logits differ by {logit_diff}");
    assert_eq!(cpu_top, gpu_top, "the devices name the photos differently");
    assert_known_classes(&gpu_top, "lite0 on cuda");
}

#[test]
fn lite0_encoding_rate_on_each_device() {
    let dir = tempfile::tempdir().unwrap();
    let (cpu, gpu) = models(dir.path());
    let pixels = photo_pixels();
    let batch = 64;
    // The eight photos repeated to one batch.
    let data: Vec<f32> = pixels
        .chunks_exact(3 * 224 * 224)
        .cycle()
        .take(batch)
        .flatten()
        .copied()
        .collect();
    let rate = |model: &EfficientNetLite, rounds: usize| {
        let x = Tensor::from_slice(&data, (batch, 3, 224, 224), &Device::Cpu).unwrap();
        let run = || {
            // The host-to-device copy of the pixels is part of encoding.
            let x = x.to_device(model.device()).unwrap();
            let out = model.forward(&x).unwrap();
            out.embedding.to_device(&Device::Cpu).unwrap()
        };
        run();
        let started = Instant::now();
        let mut last = None;
        for _ in 0..rounds {
            last = Some(run());
        }
        let seconds = started.elapsed().as_secs_f64();
        (
            (rounds * batch) as f64 / seconds,
            last.unwrap().dims().to_vec(),
        )
    };
    let (gpu_rate, dims) = rate(&gpu, 20);
    let (cpu_rate, _) = rate(&cpu, 2);
    println!(
        "cuda: lite0, batch {batch} at 224 px: cuda {gpu_rate:.0} images/s, cpu engine \
         {cpu_rate:.0} images/s ({} threads); cuda / cpu = {:.1}x",
        rayon::current_num_threads(),
        gpu_rate / cpu_rate
    );
    assert_eq!(dims, [batch, 1280]);
    assert!(gpu_rate.is_finite() && gpu_rate > 0.0);
}
