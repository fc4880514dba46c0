//! `ramem study` end to end on a small image-folder data set the test
//! writes (real EfficientNet-Lite0 embeddings), and its bad inputs.

mod common;

use std::path::{Path, PathBuf};

use common::{p, ramem};

fn write_dataset(dir: &Path, train_per_class: usize, test_per_class: usize) {
    ramem_study::fixtures::write_striped_classes(dir, train_per_class, test_per_class).unwrap();
}

fn write_config(path: &Path, dataset: &str, cache: &Path, extra: &str) {
    let text = ramem_study::fixtures::tiny_study(dataset, cache, "", extra);
    std::fs::write(path, text).unwrap();
}

/// A finished study on the tiny data set.
struct TinyStudy {
    config: PathBuf,
    out: PathBuf,
    report: serde_json::Value,
}

/// Writes the tiny data set and its study file under `dir`, lets `edit`
/// change the file's text, runs the study and reads its report.
fn run_tiny_study(dir: &Path, edit: impl FnOnce(String) -> String) -> TinyStudy {
    let data = dir.join("data");
    write_dataset(&data, 8, 3);
    let config = dir.join("study.toml");
    write_config(
        &config,
        &format!("folders:{}", data.display()),
        &dir.join("cache"),
        "",
    );
    let text = edit(std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, text).unwrap();
    let out = dir.join("out");
    let run = ramem(&["study", "--config", p(&config), "--out", p(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let report = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    TinyStudy {
        config,
        out,
        report,
    }
}

/// The first evidence file under `out` and its records, one per test image.
fn evidence_lines(out: &Path) -> (PathBuf, Vec<serde_json::Value>) {
    let evidence = std::fs::read_dir(out.join("evidence"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let lines = std::fs::read_to_string(&evidence)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (evidence, lines)
}

/// The attention an evidence record gives its neighbours and the query.
fn attention_total(line: &serde_json::Value) -> f64 {
    line["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["attention"].as_f64().unwrap())
        .sum::<f64>()
        + line["query_attention"].as_f64().unwrap()
}

#[test]
fn a_study_runs_every_method_and_writes_reports_and_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let TinyStudy {
        config,
        out,
        report,
    } = run_tiny_study(tmp.path(), |text| {
        text.replace("evidence = 2", "evidence = 100")
    });
    assert_eq!(report["benchmark"], "tiny");
    let methods: Vec<&str> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    for m in [
        "linear_probe",
        "knn_vote",
        "uniform_mean",
        "tip_adapter",
        "tip_adapter_f",
        "mam",
    ] {
        assert!(methods.contains(&m), "{m} missing from {methods:?}");
    }
    for run in report["runs"].as_array().unwrap() {
        let top1 = run["top1"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&top1), "{run}");
    }
    assert!(out.join("report.md").is_file());
    assert!(out.join("report.png").is_file());
    assert!(out.join("memories/train/manifest.json").is_file());

    // Evidence: each MAM test prediction with its neighbours and attention weights.
    let (evidence, lines) = evidence_lines(&out);
    let first = &lines[0];
    let neighbours = first["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len(), 4);
    let total = attention_total(first);
    assert!((total - 1.0).abs() < 1e-3, "attention sums to {total}");
    assert!(neighbours[0]["source"].as_str().unwrap().contains("train"));
    // Every test image is written, with the prediction the report scores.
    assert_eq!(lines.len(), 9);
    let correct = lines
        .iter()
        .filter(|l| l["predicted"] == l["label"])
        .count();
    // The tiny study trains one module (one value kind, k and seed), so the
    // one evidence file is that run's.
    let mam_runs: Vec<&serde_json::Value> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "mam")
        .collect();
    assert_eq!(mam_runs.len(), 1, "{mam_runs:?}");
    let run = mam_runs[0];
    let name = evidence.display();
    let top1 = run["top1"].as_f64().unwrap();
    assert!(
        (100.0 * correct as f64 / 9.0 - top1).abs() < 1e-9,
        "{name}: {correct}/9 right against top-1 {top1}"
    );
    for line in &lines {
        let p = line["probability"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0, "{line}");
    }

    // A second run reads the cached embeddings and neighbour lists.
    let again = ramem(&[
        "study",
        "--log",
        "debug",
        "--config",
        p(&config),
        "--out",
        p(&out),
    ]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("cached image embeddings"), "{stderr}");
    assert!(stderr.contains("neighbours from"), "{stderr}");
    assert!(out.join("memories/train/neighbours").is_dir());
}

/// Label values: each neighbour's training label as a one-hot value, for
/// the module and for uniform averaging alike.
#[test]
fn label_values_run_for_every_retrieval_method() {
    let tmp = tempfile::tempdir().unwrap();
    let report = run_tiny_study(tmp.path(), |text| {
        text.replace(
            "k = [4]",
            "k = [4]\nmethods = [\"uniform_mean\", \"mam\"]\nvalues = [\"label\", \"image+label\"]",
        )
    })
    .report;
    let mut runs: Vec<String> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["params"]["values"]
            )
        })
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        [
            "mam \"image+label\"",
            "mam \"label\"",
            "uniform_mean \"image+label\"",
            "uniform_mean \"label\""
        ]
    );
}

/// `[train] ensemble`: every trained method averages that many models, and
/// the report records it; the training-free methods are single runs.
#[test]
fn an_ensemble_is_trained_for_every_trained_method() {
    let tmp = tempfile::tempdir().unwrap();
    let TinyStudy { out, report, .. } = run_tiny_study(tmp.path(), |text| {
        text.replace("batch_size = 8", "batch_size = 8\nensemble = 3")
    });
    for run in report["runs"].as_array().unwrap() {
        let method = run["method"].as_str().unwrap();
        let expected = match method {
            "knn_vote" => serde_json::Value::Null,
            _ => serde_json::json!(3),
        };
        assert_eq!(run["params"]["ensemble"], expected, "{method}: {run}");
    }
    // The evidence shows the members' mean attention: still a distribution.
    for line in evidence_lines(&out).1 {
        let total = attention_total(&line);
        assert!((total - 1.0).abs() < 1e-3, "attention sums to {total}");
    }
}

/// Retrieved pollution: one memory holds the relevant and the irrelevant
/// entries, and each level swaps that share of every query's neighbours for
/// irrelevant ones.
#[test]
fn retrieved_pollution_swaps_that_share_of_the_neighbours() {
    let tmp = tempfile::tempdir().unwrap();
    // Irrelevant entries: grey noise, in a folder tree of its own.
    let noise = tmp.path().join("noise");
    for split in ["train", "test"] {
        let dir = noise.join(split).join("noise");
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..6u32 {
            let img = image::GrayImage::from_fn(48, 48, |x, y| {
                image::Luma([((x * 31 + y * 17 + i * 59) % 251) as u8])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
    let TinyStudy { out, report, .. } = run_tiny_study(tmp.path(), |text| {
        text.replace("k = [4]", "k = [4]\nmethods = [\"uniform_mean\", \"mam\"]")
            + &format!(
                "\n[memory]\npollution = [0.0, 0.5]\npollution_mode = \"retrieved\"\nirrelevant = \"folders:{}\"\n",
                noise.display()
            )
    });
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for run in runs {
        let params = &run["params"];
        let share = params["irrelevant_neighbours"].as_f64().unwrap();
        // How much weight the irrelevant neighbours get: for uniform
        // averaging, their share of the slots.
        let attention = params["irrelevant_attention"].as_f64().unwrap();
        match run["method"].as_str().unwrap() {
            "mam" => assert!((0.0..=1.0).contains(&attention), "{params}"),
            _ => assert!((attention - share).abs() < 1e-6, "{params}"),
        }
        // Every level: the 24 training images and the 12 irrelevant ones.
        assert_eq!(params["memory_size"], 36, "{params}");
        match params["pollution"].as_f64().unwrap() {
            0.0 => assert_eq!(share, 0.0, "{params}"),
            // 9 test images x 4 neighbours, each swapped with probability 1/2.
            _ => assert!((0.25..=0.75).contains(&share), "{params}"),
        }
    }
    let memories: Vec<String> = std::fs::read_dir(out.join("memories"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(memories, ["train+irrelevant"]);
}

#[test]
fn memories_grow_from_each_seeds_training_images() {
    let tmp = tempfile::tempdir().unwrap();
    let TinyStudy {
        out,
        report,
        config,
    } = run_tiny_study(tmp.path(), |text| {
        text.replace("seeds = [0]", "seeds = [0, 1]")
            .replace("k = [4]", "k = [4]\nmethods = [\"uniform_mean\"]")
            + "\n[memory]\nsizes = [18, 24]\ngrow_from_training = true\n"
    });
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "2 seeds x 2 sizes");
    let mut sizes: Vec<u64> = runs
        .iter()
        .map(|r| r["params"]["memory_size"].as_u64().unwrap())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [18, 18, 24, 24]);
    // Each seed's memories: its training images (18 of the 24; 6 validate)
    // are in both sizes, and the smaller memory is part of the larger.
    let sources = |dir: &str| -> Vec<String> {
        let memory = ramem_store::memory::Memory::open(out.join("memories").join(dir)).unwrap();
        (0..memory.count() as i64)
            .map(|id| memory.metadata(id).unwrap().source.unwrap())
            .collect()
    };
    let (small0, large0) = (sources("train-18-seed0"), sources("train-seed0"));
    let small1 = sources("train-18-seed1");
    assert_eq!((small0.len(), large0.len()), (18, 24));
    assert!(small0.iter().all(|s| large0.contains(s)));
    assert_ne!(small0, small1, "seeds train on other images");

    // Seed 1 alone retrieves the same test neighbours as beside seed 0:
    // each seed searches its own memories.
    let alone = tmp.path().join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("seeds = [0, 1]", "seeds = [1]")
        .replace("methods = [\"uniform_mean\"]", "methods = [\"mam\"]");
    let alone_config = alone.join("study.toml");
    std::fs::write(&alone_config, &text).unwrap();
    let both_config = tmp.path().join("both.toml");
    std::fs::write(&both_config, text.replace("seeds = [1]", "seeds = [0, 1]")).unwrap();
    let neighbours = |config: &Path, out: &Path| -> Vec<serde_json::Value> {
        let run = ramem(&["study", "--config", p(config), "--out", p(out)]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let file = out.join("evidence/mam-memory_train-18_values_image_k_4-seed1.jsonl");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["neighbours"].clone())
            .collect()
    };
    assert_eq!(
        neighbours(&alone_config, &alone.join("out")),
        neighbours(&both_config, &tmp.path().join("both")),
    );

    // A size below the training images is refused, naming both.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("sizes = [18, 24]", "sizes = [5, 24]");
    std::fs::write(&config, text).unwrap();
    let run = ramem(&[
        "study",
        "--config",
        p(&config),
        "--out",
        p(&tmp.path().join("again")),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("5 entries cannot hold seed 0's 18 training images"),
        "{err}"
    );
}

#[test]
fn an_unknown_config_field_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("study.toml");
    write_config(
        &config,
        "idx:/nonexistent",
        tmp.path(),
        "\n[train2]\nepochs = 3\n",
    );
    let run = ramem(&[
        "study",
        "--config",
        p(&config),
        "--out",
        p(&tmp.path().join("out")),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("train2") && stderr.contains("study.toml"),
        "{stderr}"
    );

    std::fs::write(
        &config,
        "name = \"x\"\ndataset = \"idx:/d\"\n[train]\nepochz = 3\n",
    )
    .unwrap();
    let run = ramem(&[
        "study",
        "--config",
        p(&config),
        "--out",
        p(&tmp.path().join("out")),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("epochz"), "{stderr}");
}

#[test]
fn a_memory_from_another_encoder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 3, 1);
    // A memory whose keys claim to come from another encoder (same width).
    let keys = tmp.path().join("keys.npy");
    let rows = common::rows(10, 1280, 3);
    ramem_store::npy::write_f32_matrix(&keys, 10, 1280, &rows).unwrap();
    let mem = tmp.path().join("mem");
    let made = ramem(&[
        "memory",
        "import",
        "--keys",
        p(&keys),
        "--memory",
        p(&mem),
        "--key-encoder",
        "clip:other",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = tmp.path().join("study.toml");
    let extra = format!("\n[memory]\nsource = \"dir:{}\"\n", mem.display());
    write_config(
        &config,
        &format!("folders:{}", data.display()),
        &tmp.path().join("cache"),
        &extra,
    );
    let run = ramem(&[
        "study",
        "--config",
        p(&config),
        "--out",
        p(&tmp.path().join("out")),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("clip:other") && stderr.contains("manifest.json"),
        "{stderr}"
    );
}

#[test]
fn text_values_come_from_the_memory_when_the_data_set_has_no_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 8, 3);
    // A memory with text values (the data set has no captions).
    let (n, key_dim, text_dim) = (40, 1280, 384);
    let keys = tmp.path().join("keys.npy");
    ramem_store::npy::write_f32_matrix(&keys, n, key_dim, &common::rows(n, key_dim, 5)).unwrap();
    let text = tmp.path().join("text.npy");
    ramem_store::npy::write_f32_matrix(&text, n, text_dim, &common::rows(n, text_dim, 6)).unwrap();
    let mem = tmp.path().join("mem");
    let made = ramem(&[
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--keys",
        p(&keys),
        "--text-values",
        p(&text),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let study = |source: &str, out: &str| {
        let config = tmp.path().join(format!("{out}.toml"));
        let text = ramem_study::fixtures::tiny_study(
            &format!("folders:{}", data.display()),
            &tmp.path().join("cache"),
            "values = [\"text\"]\nmethods = [\"uniform_mean\", \"mam\"]",
            &format!("\n[memory]\nsource = \"{source}\"\n"),
        );
        std::fs::write(&config, text).unwrap();
        let out = tmp.path().join(out);
        let run = ramem(&["study", "--config", p(&config), "--out", p(&out)]);
        (run, out)
    };
    let (run, out) = study(&format!("dir:{}", mem.display()), "from-memory");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert!(
            run["variant"].as_str().unwrap().contains("values=text"),
            "{run}"
        );
    }
    // A memory built from the captionless data set has no text to give.
    let (run, _) = study("train", "from-data");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("no captions") && err.contains("dir:PATH"),
        "{err}"
    );
}

#[test]
fn bad_data_sets_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let config = tmp.path().join("study.toml");
    let out = tmp.path().join("out");
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]));
    img.save(tmp.path().join("a.png")).unwrap();

    // A list file naming a missing image.
    std::fs::write(tmp.path().join("train.txt"), "a.png 0\nmissing.png 1\n").unwrap();
    std::fs::write(tmp.path().join("test.txt"), "a.png 0\n").unwrap();
    let spec = format!(
        "list:{},{}",
        tmp.path().join("train.txt").display(),
        tmp.path().join("test.txt").display()
    );
    write_config(&config, &spec, &cache, "");
    let run = ramem(&["study", "--config", p(&config), "--out", p(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("missing.png") && stderr.contains("train.txt"),
        "{stderr}"
    );

    // A label out of range.
    std::fs::write(tmp.path().join("train.txt"), "a.png 0\na.png 7\n").unwrap();
    write_config(&config, &format!("{spec};classes=3"), &cache, "");
    let run = ramem(&["study", "--config", p(&config), "--out", p(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains('7') && stderr.contains("train.txt"),
        "{stderr}"
    );

    // An empty class folder.
    let data = tmp.path().join("folders");
    write_dataset(&data, 2, 1);
    std::fs::create_dir_all(data.join("train/empty_class")).unwrap();
    std::fs::create_dir_all(data.join("test/empty_class")).unwrap();
    write_config(&config, &format!("folders:{}", data.display()), &cache, "");
    let run = ramem(&["study", "--config", p(&config), "--out", p(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("empty_class"), "{stderr}");
}
