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
    assert!(run["top1"].as_f64().unwrap() > 60.0, "{run}");

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
