//! `ramem train` and `ramem evaluate` end to end on a small image-folder
//! data set (real EfficientNet-Lite0 embeddings): a memory built from the
//! training images, a module trained against it and kept, scored on the
//! test split; an interrupted training resumes; bad inputs are refused.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{p, ramem};

fn ok(args: &[&str]) -> String {
    let out = ramem(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ramem {args:?} failed:\n{err}");
    err
}

fn fails(args: &[&str]) -> String {
    let out = ramem(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "ramem {args:?} succeeded:\n{err}");
    err
}

/// The tiny data set, a memory of its training images, and a study file
/// for the options.
fn setup(dir: &Path, epochs: usize) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    ramem_study::fixtures::write_striped_classes(&data, 8, 3).unwrap();
    let mem = dir.join("mem");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&mem),
        "--input",
        p(&data.join("train")),
    ]);
    let config = dir.join("options.toml");
    let text = ramem_study::fixtures::tiny_study("-", &dir.join("cache"), "", "")
        .replace("epochs = 3", &format!("epochs = {epochs}"));
    std::fs::write(&config, text).unwrap();
    (format!("folders:{}", data.display()), mem, config)
}

/// A study file that leaves the deciding settings out trains with them
/// chosen on validation: `auto` is the default of a new file, k included.
#[test]
fn settings_left_out_are_chosen_on_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, mem, _) = setup(tmp.path(), 3);
    let config = tmp.path().join("new.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"new\"\ndataset = \"-\"\ncache_dir = \"{}\"\n[validation]\nfraction = 0.3\n\
             [auto]\ncandidates = 2\n[train]\nbatch_size = 8\n",
            tmp.path().join("cache").display()
        ),
    )
    .unwrap();
    let model = tmp.path().join("model");
    let err = ok(&[
        "train",
        "--data",
        &data,
        "--memory",
        p(&mem),
        "--config",
        p(&config),
        "--out",
        p(&model),
    ]);
    assert!(err.contains("auto settings chosen on validation"), "{err}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    let k = meta["k"].as_u64().unwrap() as usize;
    assert!(ramem_study::auto::NEIGHBOURS.contains(&k), "{k}");
    let options = &meta["training"]["options"];
    let rate = options["learning_rate"].as_f64().unwrap();
    assert!(ramem_study::auto::LEARNING_RATES.contains(&rate), "{rate}");
    let decay = options["weight_decay"].as_f64().unwrap();
    assert!(ramem_study::auto::WEIGHT_DECAYS.contains(&decay), "{decay}");
    // 18 training images in batches of 8: at least 300 steps are 100 epochs.
    assert!(options["epochs"].as_u64().unwrap() >= 100, "{options}");
    let hidden = meta["model"]["config"]["hidden"].as_u64().unwrap() as usize;
    assert!(
        ramem_study::auto::HIDDEN_SIZES.contains(&hidden),
        "{hidden}"
    );
}

#[test]
fn a_trained_model_is_kept_and_scored_on_the_test_split() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, mem, config) = setup(tmp.path(), 3);
    let model = tmp.path().join("model");
    let train = |out: &Path| {
        vec![
            "train",
            "--data",
            &data,
            "--memory",
            p(&mem),
            "--config",
            p(&config),
            "--k",
            "4",
            "--out",
            p(out),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let args = train(&model);
    let err = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // The memory holds the training images: their queries never retrieve themselves.
    assert!(err.contains("holds 24 of the 24 training images"), "{err}");
    assert!(err.contains("trained mam on 18 images"), "{err}");
    for file in ["model.json", "weights.safetensors", "training.jsonl"] {
        assert!(model.join(file).is_file(), "{file}");
    }
    assert!(
        !model.join("checkpoint").exists(),
        "the checkpoint is folded into the bundle"
    );
    let log = std::fs::read_to_string(model.join("training.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3);
    // A finished bundle is not overwritten.
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("already holds a trained model"), "{err}");

    let out = tmp.path().join("report");
    let cache = tmp.path().join("cache");
    ok(&[
        "evaluate",
        "--model",
        p(&model),
        "--data",
        &data,
        "--out",
        p(&out),
        "--cache-dir",
        p(&cache),
    ]);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["method"], "mam");
    assert_eq!(run["n"], 9);
    let top1 = run["top1"].as_f64().unwrap();
    assert!(top1 > 60.0, "{run}");

    // Predicting the test images one by one from their files decides as the
    // evaluation did, and shows the evidence; a corrupt image is skipped.
    let test = tmp.path().join("data/test");
    std::fs::write(
        test.join("red_rows/broken.png"),
        b"\x89PNG\r\n\x1a\nnot a png",
    )
    .unwrap();
    let predicted = ramem(&[
        "predict",
        "--model",
        p(&model),
        "--input",
        p(&test),
        "--jsonl",
        "--batch",
        "4",
    ]);
    let err = String::from_utf8_lossy(&predicted.stderr);
    assert!(predicted.status.success(), "{err}");
    assert!(err.contains("skipped red_rows/broken.png"), "{err}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&predicted.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 9);
    let mut correct = 0;
    for line in &lines {
        let image = line["image"].as_str().unwrap();
        let top = line["top"].as_array().unwrap();
        assert_eq!(
            top.len(),
            3,
            "all three classes, most probable first: {line}"
        );
        let probs: Vec<f64> = top
            .iter()
            .map(|c| c["probability"].as_f64().unwrap())
            .collect();
        assert!(
            probs[0] >= probs[1]
                && probs[1] >= probs[2]
                && (probs.iter().sum::<f64>() - 1.0).abs() < 1e-4
        );
        correct += image.starts_with(&format!("{}/", top[0]["name"].as_str().unwrap())) as usize;
        let neighbours = line["neighbours"].as_array().unwrap();
        assert_eq!(neighbours.len(), 4, "k neighbours: {line}");
        let attention: f64 = neighbours
            .iter()
            .map(|n| n["attention"].as_f64().unwrap())
            .sum::<f64>()
            + line["query_attention"].as_f64().unwrap_or(0.0);
        assert!(
            (attention - 1.0).abs() < 1e-3,
            "attention over the query and neighbours: {line}"
        );
        let source = neighbours[0]["source"].as_str().unwrap();
        assert!(
            source.ends_with(".png"),
            "memory entries name their images: {line}"
        );
    }
    let predicted_top1 = 100.0 * correct as f64 / 9.0;
    assert!(
        (predicted_top1 - top1).abs() < 1e-6,
        "predict {predicted_top1} vs evaluate {top1}"
    );
    let predicted = ramem(&[
        "predict",
        "--model",
        p(&model),
        "--input",
        p(&test.join("blue_rows/test_00.png")),
    ]);
    let table = String::from_utf8_lossy(&predicted.stdout);
    assert!(table.starts_with("test_00.png  "), "{table}");
    assert_eq!(
        table.lines().count(),
        4,
        "the decision and 3 entries: {table}"
    );

    // Entries added after training are used at once, with a warning; the
    // model is not retrained.
    ok(&[
        "memory",
        "add",
        "--memory",
        p(&mem),
        "--input",
        p(&test.join("blue_rows")),
        "--label",
        "blue_rows",
    ]);
    let predicted = ramem(&[
        "predict",
        "--model",
        p(&model),
        "--input",
        p(&test.join("blue_rows")),
        "--jsonl",
    ]);
    let err = String::from_utf8_lossy(&predicted.stderr);
    assert!(
        err.contains("changed since the model was trained against it (24 entries then, 27 now)"),
        "{err}"
    );
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&predicted.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    // Each blue test image now retrieves itself (a training image may tie), labelled.
    let added: Vec<&serde_json::Value> = first["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["memory_id"].as_i64().unwrap() >= 24)
        .collect();
    assert!(!added.is_empty(), "{first}");
    assert!(added[0]["similarity"].as_f64().unwrap() > 0.999, "{first}");
    assert!(added.iter().all(|n| n["label"] == "blue_rows"), "{first}");

    // A memory of another encoder cannot serve the model.
    let keys = tmp.path().join("keys.npy");
    ramem_store::npy::write_f32_matrix(&keys, 4, 1280, &common::rows(4, 1280, 2)).unwrap();
    let other = tmp.path().join("other");
    ok(&[
        "memory",
        "import",
        "--memory",
        p(&other),
        "--keys",
        p(&keys),
        "--image-values",
        p(&keys),
        "--key-encoder",
        "clip:elsewhere",
    ]);
    let err = fails(&[
        "evaluate",
        "--model",
        p(&model),
        "--data",
        &data,
        "--out",
        p(&out),
        "--memory",
        p(&other),
    ]);
    assert!(
        err.contains("clip:elsewhere") && err.contains("efficientnet-lite0"),
        "{err}"
    );
}

#[test]
fn an_interrupted_training_resumes_from_its_last_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, mem, config) = setup(tmp.path(), 400);
    let model = tmp.path().join("model");
    let args = [
        "train",
        "--data",
        &data,
        "--memory",
        p(&mem),
        "--config",
        p(&config),
        "--k",
        "4",
        "--out",
        p(&model),
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ramem"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = model.join("checkpoint/checkpoint.json");
    let start = Instant::now();
    while !state.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before a checkpoint"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !model.join("model.json").exists(),
        "killed before it finished"
    );
    let err = ok(&args);
    assert!(err.contains("resumed after epoch"), "{err}");
    let log = std::fs::read_to_string(model.join("training.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 400);
}
