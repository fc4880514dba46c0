//! Training and prediction on small synthetic problems whose answers are
//! known: clusters whose queries are too noisy to classify alone but whose
//! memory neighbours sit close to the class centre.

use std::ops::ControlFlow;

use candle_core::Device;
use candle_nn::{VarBuilder, VarMap};
use ramem_model::checkpoint;
use ramem_model::heads::{LinearProbe, UniformMean};
use ramem_model::knn::{knn_vote, KnnVote};
use ramem_model::tip_adapter::{tip_adapter, TipParams};
use ramem_model::{
    new_vars, predict, train, Classifier, MamConfig, MemoryAttention, ModelError, Prediction,
    TrainConfig, TrainData,
};

mod synthetic;

use synthetic::{bank, samples, CLASSES, DIM};

/// A fresh model and the variables it trains.
fn fresh<M>(
    build: impl FnOnce(VarBuilder<'static>) -> ramem_model::error::Result<M>,
) -> (M, VarMap) {
    let (vars, vb) = new_vars(&Device::Cpu);
    (build(vb).unwrap(), vars)
}

fn go(_: ramem_model::train::TrainProgress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        learning_rate: 3e-3,
        ..TrainConfig::default()
    }
}

fn small_mam() -> MamConfig {
    let mut cfg = MamConfig::new(DIM, DIM, CLASSES);
    cfg.hidden = 32;
    cfg.heads = 4;
    cfg.dropout = 0.0;
    cfg
}

#[test]
fn memory_attention_beats_the_query_alone_when_neighbours_are_informative() {
    let device = Device::Cpu;
    let bank = bank(1);
    let train_set = samples(&bank, 200, 8, 0.45, 2);
    let val = samples(&bank, 100, 8, 0.45, 3);
    let test = samples(&bank, 400, 8, 0.45, 4);
    let (mam, mam_vars) = fresh(|vb| MemoryAttention::new(small_mam(), vb));
    let report = train(
        &mam,
        &mam_vars,
        &TrainData {
            train: &train_set,
            val: Some(&val),
            bank: Some(&bank),
            classes: CLASSES,
        },
        &config(40),
        &device,
        &mut go,
    )
    .unwrap();
    assert!(report.best_val_top1.is_some());
    let mam_pred = predict(&mam, &test, Some(&bank), &device, 64).unwrap();
    let mam_top1 = mam_pred.top1(&test.labels);

    let (probe, probe_vars) = fresh(|vb| LinearProbe::new(DIM, CLASSES, vb));
    train(
        &probe,
        &probe_vars,
        &TrainData {
            train: &train_set,
            val: Some(&val),
            bank: None,
            classes: CLASSES,
        },
        &config(40),
        &device,
        &mut go,
    )
    .unwrap();
    let probe_top1 = predict(&probe, &test, None, &device, 64)
        .unwrap()
        .top1(&test.labels);
    assert!(
        mam_top1 > probe_top1,
        "mam {mam_top1} vs probe {probe_top1}"
    );

    // One weight per attended item (query + 8 neighbours); rows sum to 1.
    assert_eq!(mam_pred.attention_items, 9);
    for row in mam_pred.attention.unwrap().chunks_exact(9) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
    }
}

#[test]
fn uniform_mean_and_training_free_baselines_learn() {
    let device = Device::Cpu;
    let bank = bank(5);
    let train_set = samples(&bank, 200, 8, 0.3, 6);
    let test = samples(&bank, 200, 8, 0.3, 7);
    let (uniform, uniform_vars) = fresh(|vb| UniformMean::new(DIM, DIM, CLASSES, vb));
    train(
        &uniform,
        &uniform_vars,
        &TrainData {
            train: &train_set,
            val: None,
            bank: Some(&bank),
            classes: CLASSES,
        },
        &config(30),
        &device,
        &mut go,
    )
    .unwrap();
    let top1 = predict(&uniform, &test, Some(&bank), &device, 64)
        .unwrap()
        .top1(&test.labels);
    assert!(top1 > 60.0, "uniform mean top-1 {top1}");

    let vote = KnnVote {
        k: 10,
        temperature: 0.1,
    };
    let knn = knn_vote(&train_set, &test, CLASSES, vote, false).unwrap();
    assert!(knn.top1(&test.labels) > 60.0);

    let zero_base = vec![0f32; test.len() * CLASSES];
    let params = TipParams {
        alpha: 1.0,
        beta: 5.0,
    };
    let tip = tip_adapter(&train_set, &test, &zero_base, CLASSES, params, &device).unwrap();
    assert!(tip.top1(&test.labels) > 60.0);
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let device = Device::Cpu;
    let bank = bank(9);
    let train_set = samples(&bank, 96, 4, 0.3, 10);
    let (full, full_vars) = fresh(|vb| MemoryAttention::new(small_mam(), vb));
    train(
        &full,
        &full_vars,
        &TrainData {
            train: &train_set,
            val: None,
            bank: Some(&bank),
            classes: CLASSES,
        },
        &config(4),
        &device,
        &mut go,
    )
    .unwrap();
    let reference = predict(&full, &train_set, Some(&bank), &device, 32).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut tc = config(4);
    tc.checkpoint_dir = Some(dir.path().to_path_buf());
    // Stop in the middle of epoch 3 (3 steps per epoch): epochs 1-2 are checkpointed.
    let (first, first_vars) = fresh(|vb| MemoryAttention::new(small_mam(), vb));
    let err = train(
        &first,
        &first_vars,
        &TrainData {
            train: &train_set,
            val: None,
            bank: Some(&bank),
            classes: CLASSES,
        },
        &tc,
        &device,
        &mut |p| {
            if p.step == 7 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ModelError::Interrupted { step: 7, .. }),
        "{err}"
    );

    tc.resume = true;
    let (resumed, resumed_vars) = fresh(|vb| MemoryAttention::new(small_mam(), vb));
    let report = train(
        &resumed,
        &resumed_vars,
        &TrainData {
            train: &train_set,
            val: None,
            bank: Some(&bank),
            classes: CLASSES,
        },
        &tc,
        &device,
        &mut go,
    )
    .unwrap();
    assert_eq!(report.resumed_epochs, 2);
    assert_eq!(report.history.len(), 4);
    let again = predict(&resumed, &train_set, Some(&bank), &device, 32).unwrap();
    let diff = reference
        .log_probs
        .iter()
        .zip(&again.log_probs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "resumed model differs by {diff}");

    // A checkpoint of another configuration is refused, naming the file.
    let mut other = small_mam();
    other.hidden = 64;
    let (other, other_vars) = fresh(|vb| MemoryAttention::new(other, vb));
    let err = train(
        &other,
        &other_vars,
        &TrainData {
            train: &train_set,
            val: None,
            bank: Some(&bank),
            classes: CLASSES,
        },
        &tc,
        &device,
        &mut go,
    )
    .unwrap_err();
    assert!(err.to_string().contains("checkpoint.json"), "{err}");
}

#[test]
fn bad_labels_and_empty_classes_are_named() {
    let device = Device::Cpu;
    let bank = bank(11);
    let mut set = samples(&bank, 8, 2, 0.3, 12);
    set.labels[3] = 7;
    let (probe, probe_vars) = fresh(|vb| LinearProbe::new(DIM, CLASSES, vb));
    let err = train(
        &probe,
        &probe_vars,
        &TrainData {
            train: &set,
            val: None,
            bank: None,
            classes: CLASSES,
        },
        &config(1),
        &device,
        &mut go,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::LabelOutOfRange {
                label: 7,
                index: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("training set"), "{err}");

    let mut set = samples(&bank, 8, 2, 0.3, 12);
    for l in set.labels.iter_mut() {
        if *l == 2 {
            *l = 1;
        }
    }
    let cfg = TrainConfig {
        logit_adjustment: 1.0,
        ..config(1)
    };
    let err = train(
        &probe,
        &probe_vars,
        &TrainData {
            train: &set,
            val: None,
            bank: None,
            classes: CLASSES,
        },
        &cfg,
        &device,
        &mut go,
    )
    .unwrap_err();
    assert!(
        matches!(err, ModelError::EmptyClass { class: 2, .. }),
        "{err}"
    );
}

#[test]
fn value_space_attention_starts_uniform_learns_and_refuses_the_query_item() {
    use ramem_model::mam::Combine;
    let device = Device::Cpu;
    let bank = bank(11);
    let train_set = samples(&bank, 200, 8, 0.45, 12);
    let test = samples(&bank, 400, 8, 0.45, 13);
    let mut refused = small_mam();
    refused.combine = Combine::Values;
    assert!(
        MemoryAttention::new(refused, new_vars(&device).1).is_err(),
        "combine = values with include_query must be refused"
    );
    let (mam, mam_vars) = fresh(|vb| MemoryAttention::new(cfg_values(&small_mam()), vb));
    mam.initialise(&mam_vars, 0).unwrap();

    // Untrained: every present neighbour weighs 1/k (the uniform-mean baseline).
    let untrained = predict(&mam, &test, Some(&bank), &device, 64).unwrap();
    assert_eq!(untrained.attention_items, 8);
    for w in untrained.attention.as_ref().unwrap() {
        assert!((w - 0.125).abs() < 1e-6, "{w}");
    }

    let data = TrainData {
        train: &train_set,
        val: None,
        bank: Some(&bank),
        classes: CLASSES,
    };
    // Largest distance of a test attention weight from uniform (1/8).
    let spread = |prediction: &Prediction| {
        prediction
            .attention
            .as_ref()
            .unwrap()
            .iter()
            .map(|w| (w - 0.125).abs())
            .fold(0f32, f32::max)
    };
    train(&mam, &mam_vars, &data, &config(40), &device, &mut go).unwrap();
    let trained = predict(&mam, &test, Some(&bank), &device, 64).unwrap();
    let top1 = trained.top1(&test.labels);
    assert!(top1 > 60.0, "value-space attention top-1 {top1}");
    // Training moved the weights away from uniform.
    let spread_free = spread(&trained);
    assert!(
        spread_free > 1e-3,
        "attention stayed uniform ({spread_free})"
    );

    // A strong pull towards uniform attention keeps the weights closer to it.
    let mut held = cfg_values(&small_mam());
    held.attention_prior = 10.0;
    let (held_mam, held_mam_vars) = fresh(|vb| MemoryAttention::new(held, vb));
    train(
        &held_mam,
        &held_mam_vars,
        &data,
        &config(40),
        &device,
        &mut go,
    )
    .unwrap();
    let held_spread = spread(&predict(&held_mam, &test, Some(&bank), &device, 64).unwrap());
    assert!(
        held_spread < spread_free / 2.0,
        "attention_prior = 10: spread {held_spread} vs {spread_free} without"
    );
}

fn cfg_values(base: &MamConfig) -> MamConfig {
    let mut cfg = base.clone();
    cfg.combine = ramem_model::mam::Combine::Values;
    cfg.include_query = false;
    cfg.similarity = true;
    cfg
}

/// One of a model's variables, flattened.
fn var_values(vars: &VarMap, name: &str) -> Vec<f32> {
    let vars = vars.data().lock().unwrap();
    vars[name]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `classifier_learning_rate` and `query_branch_learning_rate` each set the
/// rate of their own part of the module: at a vanishing rate that part
/// keeps its initial weights while another part trains at the main rate;
/// a rate that is not a positive number, or one for a part the module
/// lacks, is refused, naming the field.
#[test]
fn module_learning_rates_apply_to_their_parts_alone() {
    let device = Device::Cpu;
    let bank = bank(21);
    let train_set = samples(&bank, 100, 8, 0.45, 22);
    let data = TrainData {
        train: &train_set,
        val: None,
        bank: Some(&bank),
        classes: CLASSES,
    };
    let mut fused = small_mam();
    fused.fusion = true;
    type SetRate = fn(&mut MamConfig, Option<f64>);
    let cases: [(&str, MamConfig, SetRate, &str, &str); 2] = [
        (
            "classifier_learning_rate",
            cfg_values(&small_mam()),
            |c, r| c.classifier_learning_rate = r,
            "classifier.weight",
            "layer0.w_q.weight",
        ),
        (
            "query_branch_learning_rate",
            fused,
            |c, r| c.query_branch_learning_rate = r,
            "query_branch.weight",
            "classifier.weight",
        ),
    ];
    for (field, module, set_rate, held, trained) in cases {
        let mut slow = module.clone();
        set_rate(&mut slow, Some(1e-30));
        let (mam, vars) = fresh(|vb| MemoryAttention::new(slow, vb));
        mam.initialise(&vars, 0).unwrap();
        let (held_before, trained_before) = (var_values(&vars, held), var_values(&vars, trained));
        train(&mam, &vars, &data, &config(3), &device, &mut go).unwrap();
        assert_eq!(
            var_values(&vars, held),
            held_before,
            "{field}: {held} moved"
        );
        assert_ne!(
            var_values(&vars, trained),
            trained_before,
            "{field}: {trained} did not train at the main rate"
        );
        for bad in [0.0, f64::NAN] {
            let mut wrong = module.clone();
            set_rate(&mut wrong, Some(bad));
            let err = MemoryAttention::new(wrong, new_vars(&device).1)
                .err()
                .unwrap();
            assert!(err.to_string().contains(field), "{err}");
        }
    }
    // A rate for a part the module does not have is refused, not ignored.
    let mut unfused = small_mam();
    unfused.query_branch_learning_rate = Some(1e-2);
    let err = MemoryAttention::new(unfused, new_vars(&device).1)
        .err()
        .unwrap();
    assert!(err.to_string().contains("query_branch"), "{err}");
}

/// The fusion gate starts at the plain average of the two branches, then
/// learns; it is refused without fusion.
#[test]
fn fusion_gate_starts_at_the_plain_average_and_learns() {
    let device = Device::Cpu;
    let bank = bank(25);
    let train_set = samples(&bank, 100, 8, 0.45, 26);
    let test = samples(&bank, 40, 8, 0.45, 27);
    let mut plain_cfg = small_mam();
    plain_cfg.fusion = true;
    let mut gated_cfg = plain_cfg.clone();
    gated_cfg.fusion_gate = true;
    let (plain, plain_vars) = fresh(|vb| MemoryAttention::new(plain_cfg.clone(), vb));
    let (gated, gated_vars) = fresh(|vb| MemoryAttention::new(gated_cfg, vb));
    plain.initialise(&plain_vars, 1).unwrap();
    gated.initialise(&gated_vars, 1).unwrap();
    {
        let from = plain_vars.data().lock().unwrap();
        let to = gated_vars.data().lock().unwrap();
        for (name, var) in to.iter() {
            match from.get(name) {
                Some(source) => var.set(source.as_tensor()).unwrap(),
                None => assert!(name.starts_with("fusion_gate"), "{name}"),
            }
        }
    }
    let a = predict(&plain, &test, Some(&bank), &device, 64).unwrap();
    let b = predict(&gated, &test, Some(&bank), &device, 64).unwrap();
    let worst = a
        .log_probs
        .iter()
        .zip(&b.log_probs)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-5,
        "gated and plain fusion differ by {worst} at the start"
    );

    let data = TrainData {
        train: &train_set,
        val: None,
        bank: Some(&bank),
        classes: CLASSES,
    };
    train(&gated, &gated_vars, &data, &config(3), &device, &mut go).unwrap();
    let gate = var_values(&gated_vars, "fusion_gate.weight");
    assert!(gate.iter().any(|w| *w != 0.0), "the gate did not train");

    let mut alone = plain_cfg;
    alone.fusion = false;
    alone.fusion_gate = true;
    let err = MemoryAttention::new(alone, new_vars(&device).1)
        .err()
        .unwrap();
    assert!(err.to_string().contains("fusion_gate"), "{err}");
}

#[test]
fn label_smoothing_lowers_the_confidence_and_refuses_a_bad_epsilon() {
    let device = Device::Cpu;
    let bank = bank(11);
    // Low noise and a high rate: the plain probe becomes confident.
    let train_set = samples(&bank, 200, 8, 0.1, 12);
    let data = TrainData {
        train: &train_set,
        val: None,
        bank: None,
        classes: CLASSES,
    };
    // Mean probability of the predicted class over the training set.
    let confidence = |label_smoothing: f64| {
        let (probe, probe_vars) = fresh(|vb| LinearProbe::new(DIM, CLASSES, vb));
        let cfg = TrainConfig {
            label_smoothing,
            learning_rate: 0.1,
            ..config(30)
        };
        train(&probe, &probe_vars, &data, &cfg, &device, &mut go).unwrap();
        let pred = predict(&probe, &train_set, None, &device, 64).unwrap();
        let rows = pred.log_probs.chunks_exact(CLASSES);
        let n = rows.len() as f32;
        rows.map(|row| row.iter().fold(f32::MIN, |a, &b| a.max(b)).exp())
            .sum::<f32>()
            / n
    };
    let (plain, smoothed) = (confidence(0.0), confidence(0.3));
    assert!(
        smoothed + 0.05 < plain && plain > 0.9,
        "smoothed {smoothed} vs plain {plain}"
    );

    let (probe, probe_vars) = fresh(|vb| LinearProbe::new(DIM, CLASSES, vb));
    let bad = TrainConfig {
        label_smoothing: 1.0,
        ..config(1)
    };
    let err = train(&probe, &probe_vars, &data, &bad, &device, &mut go).unwrap_err();
    assert!(err.to_string().contains("label_smoothing"), "{err}");
}

/// A trained model's weights, saved by name, build the same model again
/// through a `VarBuilder` over the file: the constructor that trains also
/// loads, with no variable map of its own.
#[test]
fn saved_weights_load_by_tensor_name_into_the_constructor() {
    let device = Device::Cpu;
    let bank = bank(31);
    let train_set = samples(&bank, 96, 8, 0.45, 32);
    let test = samples(&bank, 40, 8, 0.45, 33);
    let data = TrainData {
        train: &train_set,
        val: None,
        bank: Some(&bank),
        classes: CLASSES,
    };
    let (mam, mam_vars) = fresh(|vb| MemoryAttention::new(small_mam(), vb));
    train(&mam, &mam_vars, &data, &config(2), &device, &mut go).unwrap();
    let (probe, probe_vars) = fresh(|vb| LinearProbe::new(DIM, CLASSES, vb));
    train(&probe, &probe_vars, &data, &config(2), &device, &mut go).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, vars) in [("mam", &mam_vars), ("probe", &probe_vars)] {
        let path = dir.path().join(format!("{name}.safetensors"));
        checkpoint::save_weights(&path, &checkpoint::model_tensors(vars)).unwrap();
    }
    let load = |name: &str| checkpoint::load_var_builder(&dir.path().join(name), &device);
    let loaded = MemoryAttention::new(small_mam(), load("mam.safetensors").unwrap()).unwrap();
    let same = |a: &Prediction, b: &Prediction| {
        assert_eq!(a.log_probs, b.log_probs);
        assert_eq!(a.attention, b.attention);
    };
    same(
        &predict(&mam, &test, Some(&bank), &device, 64).unwrap(),
        &predict(&loaded, &test, Some(&bank), &device, 64).unwrap(),
    );
    let loaded = LinearProbe::new(DIM, CLASSES, load("probe.safetensors").unwrap()).unwrap();
    same(
        &predict(&probe, &test, None, &device, 64).unwrap(),
        &predict(&loaded, &test, None, &device, 64).unwrap(),
    );
    // Weights of another shape are refused, naming the tensor; a missing
    // file names the file.
    let mut wider = small_mam();
    wider.hidden = 64;
    let err = MemoryAttention::new(wider, load("mam.safetensors").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("shape"), "{err}");
    let err = load("none.safetensors").err().unwrap().to_string();
    assert!(err.contains("none.safetensors"), "{err}");
}
