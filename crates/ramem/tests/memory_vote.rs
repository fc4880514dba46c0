//! Models that read the memory's labels, end to end through the binary on
//! real EfficientNet-Lite0 embeddings: a kNN vote over a labelled memory
//! kept as a bundle, a class it was never trained on named once its images
//! are added with `memory add`, a relabel followed without retraining, and
//! the attention module over label values from a labelled memory, and the
//! module voting with its neighbours' labels.

mod common;

use std::path::Path;

use common::{fails, ok, p};
use serde_json::Value;

/// Top-1 overall and of `class` in an evaluation report.
fn scores(report: &Path, class: &str) -> (f64, Option<f64>) {
    let report: Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let names: Vec<&str> = report["dataset"]["class_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let run = &report["runs"][0];
    let at = names.iter().position(|n| *n == class).unwrap();
    (run["top1"].as_f64().unwrap(), run["per_class"][at].as_f64())
}

fn predict_one(model: &Path, image: &Path) -> Value {
    let (out, _) = ok(&[
        "predict",
        "--model",
        p(model),
        "--input",
        p(image),
        "--jsonl",
    ]);
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

#[test]
fn a_vote_over_the_memory_names_a_class_added_after_training_and_follows_relabels() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ramem_study::fixtures::write_striped_classes(&data, 8, 3).unwrap();
    let spec = format!("folders:{}", data.display());
    let config = tmp.path().join("options.toml");
    let cache = tmp.path().join("cache");
    std::fs::write(
        &config,
        ramem_study::fixtures::tiny_study("-", &cache, "", ""),
    )
    .unwrap();
    let mem = tmp.path().join("mem");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&mem),
        "--input",
        &spec,
        "--skip-classes",
        "red_rows",
    ]);

    // A vote trained (chosen on validation) without red_rows, over a memory without it.
    let vote = tmp.path().join("vote");
    let (_, err) = ok(&[
        "train",
        "--data",
        &spec,
        "--memory",
        p(&mem),
        "--config",
        p(&config),
        "--method",
        "knn_vote",
        "--skip-classes",
        "red_rows",
        "--out",
        p(&vote),
    ]);
    assert!(err.contains("training on 2 of the 3 classes"), "{err}");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(vote.join("model.json")).unwrap()).unwrap();
    assert_eq!(meta["model"]["method"], "knn_vote");
    assert_eq!(
        meta["classes"],
        serde_json::json!(["blue_rows", "green_cols"])
    );
    assert_eq!(meta["values"], "label");
    let k = meta["k"].as_u64().unwrap();
    assert_eq!(meta["model"]["config"]["vote"]["k"].as_u64(), Some(k));

    let evaluate = |out: &Path| {
        ok(&[
            "evaluate",
            "--model",
            p(&vote),
            "--data",
            &spec,
            "--out",
            p(out),
            "--cache-dir",
            p(&cache),
        ])
    };
    let before = tmp.path().join("before");
    evaluate(&before);
    let (top1_before, red_before) = scores(&before, "red_rows");
    assert_eq!(red_before, Some(0.0));

    // red_rows enters the memory: the same bundle now names it.
    ok(&[
        "memory",
        "add",
        "--memory",
        p(&mem),
        "--input",
        &spec,
        "--only-classes",
        "red_rows",
    ]);
    let after = tmp.path().join("after");
    evaluate(&after);
    let (top1_after, red_after) = scores(&after, "red_rows");
    assert!(red_after.unwrap() > 60.0, "{red_after:?}");
    assert!(top1_after > top1_before, "{top1_before} -> {top1_after}");

    let red_image = data.join("test/red_rows/test_00.png");
    let decision = predict_one(&vote, &red_image);
    assert_eq!(decision["top"][0]["name"], "red_rows", "{decision}");
    let neighbours = decision["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len() as u64, k, "{decision}");
    let shares: f64 = neighbours
        .iter()
        .map(|n| n["attention"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-4, "vote shares: {decision}");
    assert_eq!(neighbours[0]["label"], "red_rows", "{decision}");

    // Relabel every red_rows entry as green_cols: the vote follows at once.
    let m = ramem_store::memory::Memory::open(&mem).unwrap();
    let red: Vec<String> = (0..m.count() as i64)
        .filter(|&i| m.label_name(i).unwrap() == Some("red_rows"))
        .map(|i| i.to_string())
        .collect();
    drop(m);
    assert_eq!(red.len(), 8);
    let ids = tmp.path().join("red.txt");
    let labels = tmp.path().join("green.txt");
    std::fs::write(&ids, red.join("\n")).unwrap();
    std::fs::write(&labels, vec!["green_cols"; red.len()].join("\n")).unwrap();
    ok(&[
        "memory",
        "relabel",
        "--memory",
        p(&mem),
        "--ids",
        p(&ids),
        "--labels",
        p(&labels),
    ]);
    let decision = predict_one(&vote, &red_image);
    assert_eq!(decision["top"][0]["name"], "green_cols", "{decision}");
    assert_eq!(decision["neighbours"][0]["label"], "green_cols");

    // The attention module attends over the memory's own labels too.
    let mam = tmp.path().join("mam");
    ok(&[
        "train",
        "--data",
        &spec,
        "--memory",
        p(&mem),
        "--config",
        p(&config),
        "--values",
        "image+label",
        "--k",
        "4",
        "--out",
        p(&mam),
    ]);
    let decision = predict_one(&mam, &data.join("test/blue_rows/test_00.png"));
    assert_eq!(decision["top"].as_array().unwrap().len(), 3, "{decision}");
    assert_eq!(
        decision["neighbours"][0]["label"], "blue_rows",
        "{decision}"
    );

    // The linear probe retrieves nothing: a memory given to it is not used.
    let probe = tmp.path().join("probe");
    ok(&[
        "train",
        "--data",
        &spec,
        "--memory",
        p(&mem),
        "--config",
        p(&config),
        "--method",
        "linear_probe",
        "--out",
        p(&probe),
    ]);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(probe.join("model.json")).unwrap()).unwrap();
    assert_eq!(meta["model"]["method"], "linear_probe");
    assert_eq!(meta["k"], 0);

    // A memory without labels cannot serve a vote.
    let plain = tmp.path().join("plain");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&plain),
        "--input",
        p(&data.join("train")),
    ]);
    let err = fails(&[
        "train",
        "--data",
        &spec,
        "--memory",
        p(&plain),
        "--config",
        p(&config),
        "--method",
        "knn_vote",
        "--out",
        p(&tmp.path().join("no-vote")),
    ]);
    assert!(
        err.contains("labels none of its entries") && err.contains(p(&plain)),
        "{err}"
    );
    let err = fails(&[
        "predict",
        "--model",
        p(&vote),
        "--memory",
        p(&plain),
        "--input",
        p(&red_image),
    ]);
    assert!(
        err.contains("labels none of its entries") && err.contains(p(&plain)),
        "{err}"
    );
}

/// The probabilities of a decision's top classes, by name.
fn top_probabilities(decision: &Value) -> Vec<(String, f64)> {
    decision["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_attention_module_votes_with_its_neighbours_labels_and_follows_the_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ramem_study::fixtures::write_striped_classes(&data, 8, 3).unwrap();
    let spec = format!("folders:{}", data.display());
    let cache = tmp.path().join("cache");
    let options = |name: &str, mam: &str| {
        let path = tmp.path().join(name);
        std::fs::write(
            &path,
            ramem_study::fixtures::tiny_study("-", &cache, "", mam),
        )
        .unwrap();
        path
    };
    let mem = tmp.path().join("mem");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&mem),
        "--input",
        &spec,
        "--skip-classes",
        "red_rows",
    ]);
    let train = |config: &Path, out: &Path, k: u64, extra: &[&str]| {
        let k = k.to_string();
        let mut args = vec![
            "train",
            "--data",
            &spec,
            "--memory",
            p(&mem),
            "--config",
            p(config),
            "--k",
            &k,
            "--skip-classes",
            "red_rows",
            "--out",
            p(out),
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let model_json = |dir: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap()
    };

    // `auto`: the fusion and the learning rate are chosen on validation
    // and kept as numbers.
    let auto_options = options("auto.toml", "vote = \"auto\"");
    let text = std::fs::read_to_string(&auto_options).unwrap();
    std::fs::write(
        &auto_options,
        text.replace("\nlearning_rate = 1e-3\n", "\nlearning_rate = \"auto\"\n"),
    )
    .unwrap();
    let auto = tmp.path().join("auto");
    let (_, err) = train(&auto_options, &auto, 4, &[]);
    assert!(err.contains("vote fusion chosen on validation"), "{err}");
    assert!(err.contains("auto settings chosen on validation"), "{err}");
    let meta = model_json(&auto);
    let rate = meta["training"]["options"]["learning_rate"]
        .as_f64()
        .unwrap();
    assert!(ramem_study::auto::LEARNING_RATES.contains(&rate), "{rate}");
    let vote = &meta["model"]["config"]["vote"];
    let weight = vote["weight"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&weight), "{vote}");
    assert!(vote["k"].as_u64().unwrap() <= 4, "{vote}");

    // At weight 1 the module is exactly the kNN vote with the same k and
    // temperature, and like it names a class only the memory knows.
    let knn = tmp.path().join("knn");
    train(&options("knn.toml", ""), &knn, 4, &["--method", "knn_vote"]);
    let chosen = &model_json(&knn)["model"]["config"]["vote"];
    let (k, temperature) = (chosen["k"].as_u64().unwrap(), chosen["temperature"].clone());
    let voting = tmp.path().join("voting");
    train(
        &options(
            "voting.toml",
            &format!("vote = {{ weight = 1.0, k = {k}, temperature = {temperature} }}"),
        ),
        &voting,
        k,
        &[],
    );
    let image = data.join("test/blue_rows/test_01.png");
    let (module_decision, vote_decision) =
        (predict_one(&voting, &image), predict_one(&knn, &image));
    let by_module = top_probabilities(&module_decision);
    let by_vote = top_probabilities(&vote_decision);
    assert_eq!(by_module.len(), by_vote.len());
    for ((a, pa), (b, pb)) in by_module.iter().zip(&by_vote) {
        assert_eq!(a, b);
        assert!((pa - pb).abs() < 1e-5, "{by_module:?} against {by_vote:?}");
    }
    // Each neighbour's share through the vote is in the evidence: at
    // weight 1 the module's shares are the kNN vote's, and sum to 1.
    let shares = |decision: &Value, key: &str| -> Vec<f64> {
        decision["neighbours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n[key].as_f64().unwrap_or(-1.0))
            .collect()
    };
    let module_shares = shares(&module_decision, "vote");
    assert!(
        (module_shares.iter().sum::<f64>() - 1.0).abs() < 1e-4,
        "{module_decision}"
    );
    for (a, b) in module_shares.iter().zip(shares(&vote_decision, "vote")) {
        assert!(
            (a - b).abs() < 1e-5,
            "{module_decision} against {vote_decision}"
        );
    }
    assert_eq!(
        shares(&vote_decision, "vote"),
        shares(&vote_decision, "attention")
    );

    ok(&[
        "memory",
        "add",
        "--memory",
        p(&mem),
        "--input",
        &spec,
        "--only-classes",
        "red_rows",
    ]);
    let decision = predict_one(&voting, &data.join("test/red_rows/test_00.png"));
    assert_eq!(decision["top"][0]["name"], "red_rows", "{decision}");

    // Over a memory without labels the vote cannot count: an error, not a
    // module that quietly stops voting.
    let plain = tmp.path().join("plain");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&plain),
        "--input",
        p(&data.join("train")),
    ]);
    let err = fails(&[
        "predict",
        "--model",
        p(&voting),
        "--memory",
        p(&plain),
        "--input",
        p(&image),
    ]);
    assert!(err.contains("labels none of its entries"), "{err}");
}
