//! Times full training steps of the memory attention module for
//! `benches/train_vs_pytorch.py`.
//!
//! train_bench [--steps 20] [--warmup 3] [--batch 256] [--k 32] [--dim 1280]
//!             [--hidden 512] [--heads 8] [--classes 1000] [--threads 2]
//!             [--batches 4] [--bank-rows 8192] [--seed 0] [--dump DIR]
//!             [--elementwise-threads 1] [--device cpu|cuda]
//!             [--step native|autograd] [--rows bank|gathered]
//!
//! A step is what `ramem_model::train` does per mini-batch: forward in
//! training mode (dropout on), NLL loss, backward, AdamW update. The batches
//! are gathered from a random bank (unit-norm keys and values, random
//! neighbour ids, random labels) before the clock starts; gathering is timed
//! separately. Prints one JSON line: steps/s over the timed steps, per-step
//! milliseconds (median, and per phase), threads.
//!
//! `--step native` (the default, as in `ramem train`) runs the module's
//! hand-written step ([`ramem_model::native`]): forward and backward are one
//! phase, reported as `loss_and_gradients_ms` (forward_ms and backward_ms
//! are then null). `--step autograd` runs candle's autograd, phase by phase.
//! The native step reads the neighbours' rows from the bank by id (`--rows
//! bank`, as training does: its batches carry no rows, built in
//! `lean_batch_ms`) or from gathered batches (`--rows gathered`).
//!
//! `--device cuda` runs on CUDA device 0 (a build with `--features cuda`;
//! docs/GPU.md). There each phase is timed up to a device synchronisation,
//! so the per-phase milliseconds add up to the step.
//!
//! Threads: candle's matrix products run on `--threads` rayon threads
//! (`RAYON_NUM_THREADS`); its element-wise ops use a separate pool of
//! spin-waiting workers (`CANDLE_NUM_THREADS`, default: the same count).
//! With both pools at 2 threads on a 2-core machine, 4 threads compete for
//! 2 cores and the spinning dominates a step, so by default the element-wise
//! ops run on the calling thread (`--elementwise-threads 1`): at most
//! `--threads` threads are busy at any time.
//!
//! `--dump DIR` also writes the initial weights (`weights.safetensors`), the
//! first batch (`batch.safetensors`: queries, keys, values, labels) and, in
//! the JSON, that batch's loss with dropout off (`eval_loss`, and
//! `eval_loss_native` from the hand-written step), so another
//! implementation can check that it computes the same function.

use std::time::Instant;

use candle_core::{Device, Tensor};
use ramem_model::native::{NeighbourRows, Objective};
use ramem_model::optim::AdamW;
use ramem_model::rng::SplitMix64;
use ramem_model::{
    Batch, Classifier, MamConfig, MemoryAttention, NeighbourBank, NeighbourUse, SampleSet,
};

/// The allocator the `ramem` binary trains with.
#[global_allocator]
static ALLOCATOR: ramem_model::block_cache::BlockCache =
    ramem_model::block_cache::BlockCache::new();

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Res<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a value").into()),
    }
}

/// Standard normal-ish values (sum of uniforms), unit-normalised later.
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

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = arg(&args, "--steps", 20)?;
    let warmup: usize = arg(&args, "--warmup", 3)?;
    let batch_size: usize = arg(&args, "--batch", 256)?;
    let k: usize = arg(&args, "--k", 32)?;
    let dim: usize = arg(&args, "--dim", 1280)?;
    let hidden: usize = arg(&args, "--hidden", 512)?;
    let heads: usize = arg(&args, "--heads", 8)?;
    let classes: usize = arg(&args, "--classes", 1000)?;
    let threads: usize = arg(&args, "--threads", 2)?;
    let n_batches: usize = arg(&args, "--batches", 4)?.max(1);
    let bank_rows: usize = arg(&args, "--bank-rows", 8192)?.max(1);
    let seed: u64 = arg(&args, "--seed", 0)?;
    let elementwise_threads: usize = arg(&args, "--elementwise-threads", 1)?.max(1);
    let device_name: String = arg(&args, "--device", "cpu".to_string())?;
    let step_kind: String = arg(&args, "--step", "native".to_string())?;
    let rows_from: String = arg(&args, "--rows", "bank".to_string())?;
    if rows_from != "bank" && rows_from != "gathered" {
        return Err(format!("--rows takes bank or gathered, not {rows_from}").into());
    }
    if step_kind != "native" && step_kind != "autograd" {
        return Err(format!("--step takes native or autograd, not {step_kind}").into());
    }
    let dump: Option<String> =
        arg(&args, "--dump", String::new()).map(|s| if s.is_empty() { None } else { Some(s) })?;

    // candle's matrix products take their thread count from RAYON_NUM_THREADS
    // (read on every call), gathering uses rayon's global pool, and the
    // element-wise ops candle's own pool (sized once, on first use).
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", elementwise_threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;

    let device = match device_name.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).map_err(|e| {
            format!("--device cuda: {e} (it needs a build with --features cuda and an NVIDIA GPU)")
        })?,
        other => return Err(format!("--device takes cpu or cuda, not {other}").into()),
    };
    let mut rng = SplitMix64::new(seed);
    let bank = NeighbourBank::from_matrices(
        random_matrix(&mut rng, bank_rows * dim),
        dim,
        random_matrix(&mut rng, bank_rows * dim),
        dim,
    )?;
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
    )?;
    let indices: Vec<usize> = (0..n).collect();
    let mut gather_ms = Vec::new();
    let mut batches: Vec<Batch> = Vec::new();
    for chunk in indices.chunks(batch_size) {
        let t = Instant::now();
        batches.push(samples.batch(chunk, Some(&bank), NeighbourUse::Rows, &device)?);
        gather_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // What the native step trains from (`--rows bank`, as `ramem_model::train`
    // does): batches without the neighbours' rows, which it reads from the
    // bank by id.
    let mut lean_ms = Vec::new();
    let mut lean_batches = Vec::new();
    let mut ids = Vec::new();
    if rows_from == "bank" {
        for chunk in indices.chunks(batch_size) {
            let t = Instant::now();
            // The benchmarked module (residual) reads no mean values.
            lean_batches.push(samples.batch_without_rows(chunk, &bank, false, &device)?);
            ids.push(samples.neighbour_ids(chunk));
            lean_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let lean = (!lean_batches.is_empty()).then_some(lean_batches);

    let config = MamConfig::new(dim, dim, classes);
    // The benchmarked configuration (the Python peer builds the same one):
    // one layer, query included, fusion with the query branch, dropout 0.1.
    let config = MamConfig {
        hidden,
        heads,
        fusion: true,
        dropout: 0.1,
        uniform_mix: false,
        ..config
    };
    let (vars, vb) = ramem_model::new_vars(&device);
    let model = MemoryAttention::new(config, vb)?;
    model.initialise(&vars, seed)?;

    let mut eval_loss = None;
    let mut eval_loss_native = None;
    if let Some(dir) = &dump {
        std::fs::create_dir_all(dir)?;
        vars.save(std::path::Path::new(dir).join("weights.safetensors"))?;
        let b = &batches[0];
        let nb = b.neighbours.as_ref().ok_or("no neighbours")?;
        let tensors: Vec<(&str, Tensor)> = vec![
            ("queries", b.queries.clone()),
            ("keys", nb.keys.clone().ok_or("no neighbour keys")?),
            ("values", nb.values.clone().ok_or("no neighbour values")?),
            ("labels", b.labels.to_dtype(candle_core::DType::I64)?),
        ];
        candle_core::safetensors::save(
            &tensors
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            std::path::Path::new(dir).join("batch.safetensors"),
        )?;
        let out = model.forward(b, false, None)?;
        let loss = candle_nn::loss::nll(&out.log_probs, &b.labels)?;
        eval_loss = Some(loss.to_scalar::<f32>()? as f64);
        // The native step on the same weights with dropout off: the same
        // function, computed by hand.
        let no_dropout = MamConfig {
            dropout: 0.0,
            ..model.config().clone()
        };
        let same_weights = MemoryAttention::new(
            no_dropout,
            candle_nn::VarBuilder::from_varmap(&vars, candle_core::DType::F32, &device),
        )?;
        eval_loss_native = match same_weights.native_step() {
            Some(native) => Some(
                native
                    .loss_and_gradients(b, NeighbourRows::Gathered, &Objective::default())?
                    .loss as f64,
            ),
            None => None,
        };
    }

    let mut optimizer = AdamW::new(&vars, 1e-3, 1e-4)?;
    let (mut fwd, mut bwd, mut both) = (vec![], vec![], vec![]);
    let (mut opt, mut total) = (vec![], vec![]);
    let mut losses = Vec::new();
    let mut timed_seconds = 0.0;
    for step in 0..warmup + steps {
        let batch = &batches[step % batches.len()];
        let t0 = Instant::now();
        let native = (step_kind == "native")
            .then(|| model.native_step())
            .flatten();
        let (loss, t1, t2) = match native {
            Some(native) => {
                let (batch, rows) = match &lean {
                    Some(lean) => (
                        &lean[step % lean.len()],
                        NeighbourRows::Bank {
                            bank: &bank,
                            ids: &ids[step % lean.len()],
                        },
                    ),
                    None => (batch, NeighbourRows::Gathered),
                };
                let out = native.loss_and_gradients(batch, rows, &Objective::default())?;
                let t2 = Instant::now();
                optimizer.step_native(&out.gradients)?;
                let loss = out.loss as f64;
                native.recycle(out);
                (loss, None, t2)
            }
            None => {
                let out = model.forward(batch, true, None)?;
                let loss = candle_nn::loss::nll(&out.log_probs, &batch.labels)?;
                // A no-op on the CPU; on CUDA it waits for the queued kernels.
                device.synchronize()?;
                let t1 = Instant::now();
                let grads = loss.backward()?;
                device.synchronize()?;
                let t2 = Instant::now();
                optimizer.step(&grads)?;
                (loss.to_scalar::<f32>()? as f64, Some(t1), t2)
            }
        };
        let t3 = Instant::now();
        if step >= warmup {
            match t1 {
                Some(t1) => {
                    fwd.push((t1 - t0).as_secs_f64() * 1e3);
                    bwd.push((t2 - t1).as_secs_f64() * 1e3);
                }
                None => both.push((t2 - t0).as_secs_f64() * 1e3),
            }
            opt.push((t3 - t2).as_secs_f64() * 1e3);
            total.push((t3 - t0).as_secs_f64() * 1e3);
            timed_seconds += (t3 - t0).as_secs_f64();
            losses.push(loss);
        }
    }
    if !losses.iter().all(|l| l.is_finite()) {
        return Err("the training loss is not finite".into());
    }
    println!(
        "{}",
        serde_json::json!({
            "engine": "ramem",
            "device": device_name,
            "steps": steps,
            "warmup": warmup,
            "batch": batch_size,
            "k": k,
            "dim": dim,
            "hidden": hidden,
            "heads": heads,
            "classes": classes,
            "threads": threads,
            "rayon_threads": rayon::current_num_threads(),
            "elementwise_threads": elementwise_threads,
            "steps_per_s": steps as f64 / timed_seconds,
            "ms_per_step": median(&total),
            "ms_per_step_all": total,
            "step": step_kind,
            "forward_ms": (!fwd.is_empty()).then(|| median(&fwd)),
            "backward_ms": (!bwd.is_empty()).then(|| median(&bwd)),
            "loss_and_gradients_ms": (!both.is_empty()).then(|| median(&both)),
            "optimizer_ms": median(&opt),
            "gather_ms_per_batch": median(&gather_ms),
            "rows": if step_kind == "native" { rows_from.as_str() } else { "gathered" },
            "lean_batch_ms": (!lean_ms.is_empty()).then(|| median(&lean_ms)),
            "loss_first": losses.first(),
            "loss_last": losses.last(),
            "eval_loss": eval_loss,
            "eval_loss_native": eval_loss_native,
        })
    );
    Ok(())
}
