//! The study as a library call, on a small image-folder data set the test
//! writes (real EfficientNet-Lite0 embeddings, from the asset cache that
//! `scripts/setup.sh --test` fills): every method runs and is scored, and
//! retrieval through the HNSW index records its recall against exact search.

use std::path::Path;

use ramem_study::{run_study, Method, StudyConfig};

fn write_dataset(dir: &Path, train_per_class: usize, test_per_class: usize) {
    ramem_study::fixtures::write_striped_classes(dir, train_per_class, test_per_class).unwrap();
}

/// The tiny study with k = 4 and 8, `top` added to its top-level fields
/// and `tables` after its tables.
fn config(dir: &Path, top: &str, tables: &str) -> StudyConfig {
    let data = format!("folders:{}", dir.join("data").display());
    let top = format!("{top}\nk = [4, 8]");
    let text = ramem_study::fixtures::tiny_study(&data, &dir.join("cache"), "", tables);
    StudyConfig::parse(&text.replace("k = [4]", &top)).unwrap()
}

#[test]
fn every_method_runs_and_is_scored_as_a_library_call() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("data"), 8, 3);
    let out = tmp.path().join("out");
    let study = run_study(&config(tmp.path(), "", ""), &out).unwrap();
    let report = &study.report;
    // One run per method, and per k for the two that retrieve.
    for method in Method::ALL {
        let runs: Vec<_> = report
            .runs
            .iter()
            .filter(|r| r.method == method.name())
            .collect();
        let expected = if method.retrieves() { 2 } else { 1 };
        assert_eq!(runs.len(), expected, "{method}");
        for run in runs {
            assert_eq!(run.metrics.n, 9, "{method}: every test image scored");
            assert!(run.params.contains_key("posthoc_tau"), "{method}");
            // Exact search: no engine or recall recorded.
            assert!(!run.params.contains_key("recall_at_k"), "{method}");
        }
    }
    assert_eq!(report.summary.len(), 8);
    assert!(study.files.json.is_file() && study.files.markdown.is_file());
    assert!(
        out.join("k.png").is_file(),
        "two k values make an axis plot"
    );
    let evidence: Vec<_> = std::fs::read_dir(out.join("evidence"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        evidence.len(),
        2,
        "one file per attention run: {evidence:?}"
    );
}

#[test]
fn approximate_retrieval_records_its_recall_and_equals_exact_search_when_it_finds_every_neighbour()
{
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("data"), 8, 3);
    let retrieving = "methods = [\"uniform_mean\", \"mam\"]\n";
    let exact = run_study(
        &config(tmp.path(), retrieving, ""),
        &tmp.path().join("exact"),
    )
    .unwrap();
    // A beam wider than the 24-entry memory visits every entry, and a
    // shortlist as long as the memory re-scores every entry: both find the
    // exact neighbours, so every run is the same.
    for (engine, ef, saved) in [("hnsw", 64, "index-hnsw"), ("int8", 24, "index-int8")] {
        let out = tmp.path().join(engine);
        let approximate = run_study(
            &config(
                tmp.path(),
                retrieving,
                &format!("[retrieval]\nengine = \"{engine}\"\nef = {ef}\n"),
            ),
            &out,
        )
        .unwrap();
        assert!(out
            .join("memories/train")
            .join(saved)
            .join("header.json")
            .is_file());
        assert_eq!(exact.report.runs.len(), approximate.report.runs.len());
        for (a, b) in exact.report.runs.iter().zip(&approximate.report.runs) {
            assert_eq!((&a.method, &a.variant), (&b.method, &b.variant));
            assert_eq!(a.metrics, b.metrics, "{engine}: {} {}", a.method, a.variant);
            assert_eq!(b.params["engine"], engine);
            assert_eq!(b.params["ef"], ef);
            assert_eq!(b.params["recall_at_k"], 1.0);
        }
    }
}

#[test]
fn a_data_set_without_captions_cannot_give_text_values() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("data"), 2, 1);
    let mut text = config(tmp.path(), "", "");
    text.values = vec![ramem_model::ValueChoice::Text];
    let err = run_study(&text, &tmp.path().join("out"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("captions") && err.contains("text"), "{err}");
}

#[test]
fn the_module_records_the_vote_fusion_validation_chose() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("data"), 8, 3);
    let out = tmp.path().join("out");
    let study = run_study(
        &config(tmp.path(), "methods = [\"mam\"]\n", "vote = \"auto\"\n"),
        &out,
    )
    .unwrap();
    let runs = &study.report.runs;
    assert_eq!(runs.len(), 2, "one run per k");
    for run in runs {
        let weight = run.params["vote_weight"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&weight), "{:?}", run.params);
        let k = run.params["k"].as_u64().unwrap();
        assert!(run.params["vote_k"].as_u64().unwrap() <= k);
        assert!(run.params["vote_temperature"].as_f64().unwrap() > 0.0);
        // The evidence gives each neighbour's share through the vote: they
        // sum to the vote's weight (every neighbour here is labelled).
        let file = out
            .join("evidence")
            .join(format!("mam-{}-seed0.jsonl", run.variant).replace([',', '='], "_"));
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            let shares: f64 = line["neighbours"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["vote"].as_f64().unwrap())
                .sum();
            assert!(
                (shares - weight).abs() < 1e-4,
                "{shares} against {weight}: {line}"
            );
        }
    }
}

#[test]
fn auto_settings_are_chosen_on_validation_for_every_trained_method() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("data"), 8, 3);
    let data = format!("folders:{}", tmp.path().join("data").display());
    let text = ramem_study::fixtures::tiny_study(&data, &tmp.path().join("cache"), "", "")
        .replace("[train]\n", "[auto]\ncandidates = 4\n\n[train]\n")
        .replace(
            "learning_rate = 1e-3\nhead_learning_rate = 1e-3",
            "learning_rate = \"auto\"\nhead_learning_rate = \"auto\"",
        )
        .replace("logit_adjustment = 0.0", "logit_adjustment = \"auto\"")
        .replace("hidden = 32", "hidden = \"auto\"")
        // Up to 64 neighbours in a memory of fewer entries: lists run short.
        .replace("k = [4]", "k = \"auto\"");
    let config = StudyConfig::parse(&text).unwrap();
    assert_eq!(config.auto_settings().len(), 4);
    assert!(config.k.is_auto());
    let study = run_study(&config, &tmp.path().join("out")).unwrap();
    for run in &study.report.runs {
        let method = Method::ALL
            .into_iter()
            .find(|m| m.name() == run.method)
            .unwrap();
        if !method.trained() {
            assert!(
                !run.params.contains_key("auto_candidates"),
                "{}",
                run.method
            );
            continue;
        }
        let p = &run.params;
        assert_eq!(p["auto_candidates"], 4, "{}: {p:?}", run.method);
        // 4 candidates, eta 3: 4 short trainings, 2 longer, 1 full.
        assert_eq!(p["auto_trainings"], 7, "{}: {p:?}", run.method);
        let rate = p
            .get("auto_learning_rate")
            .or(p.get("auto_head_learning_rate"))
            .and_then(|v| v.as_f64())
            .unwrap();
        let grid: Vec<f64> = match method {
            Method::Mam | Method::TipAdapterF => ramem_study::auto::LEARNING_RATES.to_vec(),
            _ => ramem_study::auto::HEAD_LEARNING_RATES.to_vec(),
        };
        assert!(grid.contains(&rate), "{}: {rate}", run.method);
        let tau = p["auto_logit_adjustment"].as_f64().unwrap();
        assert!(ramem_study::auto::LOGIT_ADJUSTMENTS.contains(&tau));
        // Only the module searches its own size, only the retrieving
        // methods k, and the run's k is the one chosen.
        let hidden = p.get("auto_hidden").and_then(|h| h.as_u64());
        let k = p.get("auto_k").and_then(|k| k.as_u64());
        match method {
            Method::Mam => assert!([256, 512].contains(&hidden.unwrap())),
            _ => assert_eq!(hidden, None, "{}", run.method),
        }
        match method {
            Method::Mam | Method::UniformMean => {
                let k = k.unwrap() as usize;
                assert!(ramem_study::auto::NEIGHBOURS.contains(&k), "{p:?}");
                assert_eq!(p["k"], k, "{p:?}");
                assert!(run.variant.ends_with("k=auto"), "{}", run.variant);
            }
            _ => assert_eq!(k, None, "{}", run.method),
        }
    }
    let err = StudyConfig::parse(&text.replace("batch_size = 8", "batch_size = \"auto\""))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("batch_size"), "{err}");
}
