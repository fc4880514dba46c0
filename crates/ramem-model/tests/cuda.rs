//! The `cuda` feature on a GPU: the memory attention module trains on CUDA
//! to the same numbers as on the CPU, still learns, and how fast a training
//! step runs at the study's shapes on each device.
//!
//! Built only with `--features cuda`, and then meant for a machine with an
//! NVIDIA GPU: without one every test here fails (on purpose) rather than
//! passing vacuously. Build and run notes: docs/GPU.md.

#![cfg(feature = "cuda")]

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{Device, Tensor};
use ramem_model::optim::AdamW;
use ramem_model::rng::SplitMix64;
use ramem_model::{
    new_vars, predict, train, Batch, Classifier, MamConfig, MemoryAttention, NeighbourBank,
    NeighbourUse, Prediction, SampleSet, TrainConfig, TrainData,
};

mod synthetic;

use synthetic::{bank, gaussian, samples, CLASSES, DIM};

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

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-6)
}

#[test]
fn cuda_device_opens_and_multiplies_like_the_cpu() {
    let gpu = cuda();
    assert!(gpu.is_cuda());
    let mut rng = SplitMix64::new(42);
    let a: Vec<f32> = (0..64 * 1280).map(|_| gaussian(&mut rng)).collect();
    let b: Vec<f32> = (0..1280 * 96).map(|_| gaussian(&mut rng)).collect();
    let product = |device: &Device| -> Vec<f32> {
        let a = Tensor::from_slice(&a, (64, 1280), device).unwrap();
        let b = Tensor::from_slice(&b, (1280, 96), device).unwrap();
        a.matmul(&b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let diff = max_abs_diff(&product(&Device::Cpu), &product(&gpu));
    println!("cuda: 64x1280 @ 1280x96 max |cpu - cuda| = {diff:.3e}");
    // Entries are sums of 1280 unit-variance products (~36 in size); f32 GEMM
    // (no TF32: candle's default) agrees to a few ulps of that.
    assert!(diff < 1e-3, "matmul differs by {diff}");
}

/// Everything one training run of the small problem produced on `device`.
struct Run {
    step_losses: Vec<f64>,
    epoch_losses: Vec<f64>,
    initial: Prediction,
    trained: Prediction,
    top1: f64,
    seconds: f64,
}

fn train_small(device: &Device) -> Run {
    let bank = bank(1);
    let train_set = samples(&bank, 200, 8, 0.45, 2);
    let test = samples(&bank, 400, 8, 0.45, 4);
    let mut cfg = MamConfig::new(DIM, DIM, CLASSES);
    cfg.hidden = 32;
    cfg.heads = 4;
    // Dropout on: its masks come from the module's seeded generator on the
    // host, so both devices draw the same ones.
    cfg.dropout = 0.1;
    let (vars, vb) = new_vars(device);
    let mam = MemoryAttention::new(cfg, vb).unwrap();
    let config = TrainConfig {
        epochs: 40,
        batch_size: 32,
        learning_rate: 3e-3,
        ..TrainConfig::default()
    };
    mam.initialise(&vars, config.seed).unwrap();
    let initial = predict(&mam, &test, Some(&bank), device, 64).unwrap();
    let mut step_losses = Vec::new();
    let started = Instant::now();
    // No validation split: the last epoch is kept on both devices, so a tie
    // in validation accuracy cannot pick different epochs.
    let report = train(
        &mam,
        &vars,
        &TrainData {
            train: &train_set,
            val: None,
            bank: Some(&bank),
            classes: CLASSES,
        },
        &config,
        device,
        &mut |p| {
            step_losses.push(p.loss);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let trained = predict(&mam, &test, Some(&bank), device, 64).unwrap();
    let top1 = trained.top1(&test.labels);
    Run {
        step_losses,
        epoch_losses: report.history.iter().map(|e| e.loss).collect(),
        initial,
        trained,
        top1,
        seconds,
    }
}

#[test]
fn training_on_cuda_matches_the_cpu_and_learns() {
    let gpu = cuda();
    let cpu_run = train_small(&Device::Cpu);
    let gpu_run = train_small(&gpu);

    // Every number first, then the checks, so one run shows all the margins.
    let initial_diff = max_abs_diff(&cpu_run.initial.log_probs, &gpu_run.initial.log_probs);
    let step_rel = cpu_run
        .step_losses
        .iter()
        .zip(&gpu_run.step_losses)
        .map(|(a, b)| relative(*a, *b))
        .fold(0f64, f64::max);
    let epoch_rel = cpu_run
        .epoch_losses
        .iter()
        .zip(&gpu_run.epoch_losses)
        .map(|(a, b)| relative(*a, *b))
        .fold(0f64, f64::max);
    let log_prob_diff = max_abs_diff(&cpu_run.trained.log_probs, &gpu_run.trained.log_probs);
    let cpu_attention = cpu_run.trained.attention.as_ref().unwrap();
    let gpu_attention = gpu_run.trained.attention.as_ref().unwrap();
    let attention_diff = max_abs_diff(cpu_attention, gpu_attention);
    let (cpu_classes, gpu_classes) = (cpu_run.trained.argmax(), gpu_run.trained.argmax());
    let agree = cpu_classes
        .iter()
        .zip(&gpu_classes)
        .filter(|(a, b)| a == b)
        .count();
    println!("cuda: loss per epoch (cpu / cuda):");
    for (e, (a, b)) in cpu_run
        .epoch_losses
        .iter()
        .zip(&gpu_run.epoch_losses)
        .enumerate()
    {
        println!("  epoch {:>2}: {a:.6} / {b:.6}", e + 1);
    }
    println!(
        "cuda: initial log-probs max diff {initial_diff:.3e}; step loss max rel diff {step_rel:.3e} \
         ({} steps); epoch loss max rel diff {epoch_rel:.3e}",
        cpu_run.step_losses.len()
    );
    println!(
        "cuda: trained log-probs max diff {log_prob_diff:.3e}; attention max diff \
         {attention_diff:.3e}; argmax agreement {agree}/{}",
        cpu_classes.len()
    );
    println!(
        "cuda: test top-1 cpu {:.2}%, cuda {:.2}% (chance 25%); training took cpu {:.2} s, cuda {:.2} s",
        cpu_run.top1, gpu_run.top1, cpu_run.seconds, gpu_run.seconds
    );

    assert_eq!(cpu_run.step_losses.len(), gpu_run.step_losses.len());
    assert!(
        initial_diff < 1e-5,
        "untrained log-probs differ by {initial_diff}"
    );
    // Tolerances: 15x or more the margins measured on an H200 (docs/GPU.md).
    assert!(
        step_rel < 1e-5,
        "a training step's loss differs by {step_rel} (relative)"
    );
    assert!(
        epoch_rel < 1e-5,
        "an epoch's loss differs by {epoch_rel} (relative)"
    );
    assert!(
        log_prob_diff < 1e-4,
        "trained log-probs differ by {log_prob_diff}"
    );
    assert!(
        attention_diff < 1e-5,
        "attention weights differ by {attention_diff}"
    );
    assert_eq!(gpu_run.trained.attention_items, 9);
    for row in gpu_attention.chunks_exact(9) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "attention row sums to {sum}");
    }
    // Near-ties may flip a prediction or two, no more.
    assert!(
        agree * 100 >= cpu_classes.len() * 99,
        "only {agree}/{} predictions agree",
        cpu_classes.len()
    );
    assert!(gpu_run.top1 > 60.0, "cuda top-1 {}", gpu_run.top1);
    assert!(
        (gpu_run.top1 - cpu_run.top1).abs() <= 1.0,
        "top-1 cpu {} vs cuda {}",
        cpu_run.top1,
        gpu_run.top1
    );
}

/// Values spread like standard normals (sum of uniforms), as in
/// examples/train_bench.rs.
fn random_matrix(rng: &mut SplitMix64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let s: f64 = (0..4)
                .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
                .sum();
            (s - 2.0) as f32
        })
        .collect()
}

/// Steps per second and the loss of each timed step of full training steps
/// (forward with dropout, NLL, backward, AdamW) on `device`.
fn step_rate(
    device: &Device,
    samples: &SampleSet,
    bank: &NeighbourBank,
    config: &MamConfig,
    batch_size: usize,
    warmup: usize,
    steps: usize,
) -> (f64, Vec<f64>) {
    let indices: Vec<usize> = (0..samples.len()).collect();
    let batches: Vec<Batch> = indices
        .chunks(batch_size)
        .map(|chunk| {
            samples
                .batch(chunk, Some(bank), NeighbourUse::Rows, device)
                .unwrap()
        })
        .collect();
    let (vars, vb) = new_vars(device);
    let model = MemoryAttention::new(config.clone(), vb).unwrap();
    model.initialise(&vars, 0).unwrap();
    let mut optimizer = AdamW::new(&vars, 1e-3, 1e-4).unwrap();
    let mut losses = Vec::new();
    let mut seconds = 0.0;
    for step in 0..warmup + steps {
        let batch = &batches[step % batches.len()];
        let t = Instant::now();
        let out = model.forward(batch, true, None).unwrap();
        let loss = candle_nn::loss::nll(&out.log_probs, &batch.labels).unwrap();
        let grads = loss.backward().unwrap();
        optimizer.step(&grads).unwrap();
        // Reading the loss waits for the device.
        let loss = loss.to_scalar::<f32>().unwrap() as f64;
        if step >= warmup {
            seconds += t.elapsed().as_secs_f64();
        }
        losses.push(loss);
    }
    (steps as f64 / seconds, losses)
}

#[test]
fn training_step_rate_at_the_study_shapes() {
    let gpu = cuda();
    let (batch_size, k, dim, classes, bank_rows, n_batches) = (256, 32, 1280, 1000, 8192, 4);
    let mut rng = SplitMix64::new(0);
    let bank = NeighbourBank::from_matrices(
        random_matrix(&mut rng, bank_rows * dim),
        dim,
        random_matrix(&mut rng, bank_rows * dim),
        dim,
    )
    .unwrap();
    let n = batch_size * n_batches;
    let labels: Vec<usize> = (0..n).map(|_| rng.below(classes)).collect();
    let neighbours: Vec<i64> = (0..n * k).map(|_| rng.below(bank_rows) as i64).collect();
    let samples = SampleSet::new(
        "bench",
        random_matrix(&mut rng, n * dim),
        dim,
        labels,
        neighbours,
        k,
    )
    .unwrap();
    // The configuration examples/train_bench.rs times.
    let config = MamConfig {
        hidden: 512,
        heads: 8,
        fusion: true,
        dropout: 0.1,
        uniform_mix: false,
        ..MamConfig::new(dim, dim, classes)
    };
    let (warmup, cpu_steps, gpu_steps) = (3, 10, 50);
    let (gpu_rate, gpu_losses) = step_rate(
        &gpu, &samples, &bank, &config, batch_size, warmup, gpu_steps,
    );
    let (cpu_rate, cpu_losses) = step_rate(
        &Device::Cpu,
        &samples,
        &bank,
        &config,
        batch_size,
        warmup,
        cpu_steps,
    );
    let loss_rel = cpu_losses
        .iter()
        .zip(&gpu_losses)
        .map(|(a, b)| relative(*a, *b))
        .fold(0f64, f64::max);
    println!(
        "cuda: training step at k = {k}, d = {dim}, batch {batch_size}, hidden 512, 8 heads, \
         {classes} classes: cuda {gpu_rate:.2} steps/s ({:.2} ms), cpu {cpu_rate:.2} steps/s \
         ({:.2} ms, {} rayon threads); cuda / cpu = {:.1}x",
        1e3 / gpu_rate,
        1e3 / cpu_rate,
        rayon::current_num_threads(),
        gpu_rate / cpu_rate
    );
    println!(
        "cuda: losses of the first {} steps, max rel diff cpu vs cuda {loss_rel:.3e} (first {:.6} / {:.6})",
        cpu_losses.len(),
        cpu_losses[0],
        gpu_losses[0]
    );
    assert!(gpu_losses.iter().chain(&cpu_losses).all(|l| l.is_finite()));
    assert!(
        loss_rel < 1e-5,
        "cpu and cuda losses differ by {loss_rel} (relative)"
    );
}
