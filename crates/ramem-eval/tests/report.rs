use std::fs;
use std::path::Path;

use ramem_eval::plot::{bar_chart_size, LINE_CHART_SIZE};
use ramem_eval::{plot_lines, summarize, EvalError, Metrics, Report, Run, Stat};

fn metrics(top1: f64, few: Option<f64>) -> Metrics {
    Metrics {
        top1,
        top5: Some(top1 + 10.0),
        many: Some(top1 + 5.0),
        medium: Some(top1),
        few,
        per_class: vec![Some(top1), None],
        n: 100,
    }
}

fn sample_report() -> Report {
    let mut r = Report::new("toy_lt")
        .with_dataset("name", "toy")
        .with_dataset("classes", 2);
    for (seed, t) in [(0, 60.0), (1, 62.0), (2, 64.0)] {
        r.add_run(
            Run::new("mam", "values=image,k=32", seed, metrics(t, Some(t - 20.0)))
                .with_param("k", 32)
                .with_times(Some(12.5), Some(0.5)),
        );
    }
    for (seed, t) in [(0, 55.0), (1, 57.0)] {
        r.add_run(Run::new("linear_probe", "", seed, metrics(t, Some(50.0))));
    }
    let mut hard = metrics(70.0, None);
    hard.top5 = None;
    r.add_run(Run::new("knn_vote", "k=10|weighted", 0, hard));
    r
}

/// Width, height and colour type of a PNG file, decoded in full.
fn decode_png(path: &Path) -> (u32, u32, png::ColorType) {
    let file = fs::File::open(path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    // Not a blank canvas: some pixel is not white.
    assert!(buf[..info.buffer_size()].iter().any(|&b| b != 255));
    (info.width, info.height, info.color_type)
}

#[test]
fn stat_mean_and_sample_std() {
    let s = Stat::of(&[1.0, 2.0, 3.0]).unwrap();
    assert_eq!((s.mean, s.std, s.n), (2.0, Some(1.0), 3));
    let s = Stat::of(&[60.0, 64.0]).unwrap();
    assert!((s.std.unwrap() - 8f64.sqrt()).abs() < 1e-12);
    let s = Stat::of(&[5.0]).unwrap();
    assert_eq!((s.mean, s.std), (5.0, None));
    assert_eq!(Stat::of(&[]), None);
}

#[test]
fn summary_groups_by_method_and_variant() {
    let mut r = sample_report();
    // Same method, other variant: its own group.
    r.add_run(Run::new("mam", "values=text,k=32", 0, metrics(40.0, None)));
    let s = summarize(&r.runs);
    let keys: Vec<(&str, &str, usize)> = s
        .iter()
        .map(|g| (g.method.as_str(), g.variant.as_str(), g.n_seeds))
        .collect();
    assert_eq!(
        keys,
        [
            ("mam", "values=image,k=32", 3),
            ("linear_probe", "", 2),
            ("knn_vote", "k=10|weighted", 1),
            ("mam", "values=text,k=32", 1),
        ]
    );
    let mam = &s[0];
    assert_eq!(mam.seeds, [0, 1, 2]);
    assert_eq!(mam.top1.mean, 62.0);
    assert_eq!(mam.top1.std, Some(2.0));
    assert_eq!(mam.few.as_ref().unwrap().mean, 42.0);
    assert_eq!(mam.train_seconds.as_ref().unwrap().std, Some(0.0));
    assert_eq!(s[1].train_seconds, None);
    assert_eq!(s[2].top5, None);
    assert_eq!(s[2].top1.std, None);
    assert_eq!(s[3].few, None);
}

#[test]
fn write_then_read_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/report");
    let report = sample_report();
    let files = report.write(&out).unwrap();
    assert_eq!(files.json, out.join("report.json"));
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["report.json", "report.md", "report.png"]);

    let back = Report::read(&files.json).unwrap();
    assert_eq!(back, report);

    // The JSON layout documented in docs/REPORT.md.
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&files.json).unwrap()).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["benchmark"], "toy_lt");
    assert!(chrono::DateTime::parse_from_rfc3339(v["created"].as_str().unwrap()).is_ok());
    assert_eq!(v["dataset"]["classes"], 2);
    let run = &v["runs"][0];
    assert_eq!(run["method"], "mam");
    assert_eq!(run["params"]["k"], 32);
    assert_eq!(run["top1"], 60.0);
    assert_eq!(run["per_class"], serde_json::json!([60.0, null]));
    assert_eq!(run["train_seconds"], 12.5);
    assert!(v["runs"][5]["top5"].is_null());
    assert_eq!(v["summary"][0]["top1"]["mean"], 62.0);
    assert_eq!(v["summary"][0]["n_seeds"], 3);
}

#[test]
fn read_recomputes_a_stale_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let mut report = sample_report();
    report.summary.clear();
    fs::write(&path, serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(Report::read(&path).unwrap().summary.len(), 3);
}

#[test]
fn read_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let err = Report::read(&missing).unwrap_err().to_string();
    assert!(
        err.contains("missing.json") && err.contains("cannot read report"),
        "{err}"
    );

    let bad = dir.path().join("bad.json");
    fs::write(&bad, r#"{"benchmark": "x"}"#).unwrap();
    let err = Report::read(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.json") && err.contains("not a valid report"),
        "{err}"
    );

    let newer = dir.path().join("newer.json");
    let mut v = serde_json::to_value(sample_report()).unwrap();
    v["schema_version"] = 99.into();
    fs::write(&newer, v.to_string()).unwrap();
    let err = Report::read(&newer).unwrap_err();
    assert!(matches!(err, EvalError::InvalidReport { .. }));
    assert!(err.to_string().contains("newer.json"), "{err}");
}

#[test]
fn non_finite_metric_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = sample_report();
    report.runs[1].metrics.top1 = f64::NAN;
    let err = report.write(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("report.json") && err.contains("seed 1: top1 = NaN"),
        "{err}"
    );
    assert!(!dir.path().join("report.json").exists());
}

#[test]
fn markdown_table() {
    let md = sample_report().to_markdown();
    assert!(md.starts_with("# toy_lt\n"), "{md}");
    assert!(md.contains("6 run(s), 3 seed(s) (0, 1, 2)"), "{md}");
    assert!(md.contains("Dataset: classes: 2, name: toy."), "{md}");
    assert!(md.contains("| Method | Variant | Seeds | Top-1 | Top-5 | Many | Medium | Few |"));
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).skip(1).collect();
    assert_eq!(rows.len(), 3, "{md}");
    assert_eq!(
        rows[0],
        "| mam | values=image,k=32 | 3 | 62.00 ± 2.00 | **72.00 ± 2.00** | 67.00 ± 2.00 | 62.00 ± 2.00 | 42.00 ± 2.00 |"
    );
    assert_eq!(
        rows[1],
        "| linear_probe |  | 2 | 56.00 ± 1.41 | 66.00 ± 1.41 | 61.00 ± 1.41 | 56.00 ± 1.41 | **50.00 ± 0.00** |"
    );
    // One seed: no std; hard predictions: no top-5; pipes escaped.
    assert_eq!(
        rows[2],
        "| knn_vote | k=10\\|weighted | 1 | **70.00** | – | **75.00** | **70.00** | – |"
    );
}

#[test]
fn markdown_bolds_every_tied_best() {
    let mut r = Report::new("ties");
    r.add_run(Run::new("a", "", 0, metrics(50.0, None)));
    r.add_run(Run::new("b", "", 0, metrics(50.0, None)));
    let md = r.to_markdown();
    assert_eq!(md.matches("**50.00**").count(), 4, "{md}");
}

#[test]
fn report_png_is_valid_and_sized_by_groups() {
    let dir = tempfile::tempdir().unwrap();
    let files = sample_report().write(dir.path()).unwrap();
    let (w, h, color) = decode_png(&files.png);
    assert_eq!((w, h), bar_chart_size(3));
    assert_eq!(color, png::ColorType::Rgb);
}

#[test]
fn empty_report_still_renders() {
    let dir = tempfile::tempdir().unwrap();
    let files = Report::new("empty").write(dir.path()).unwrap();
    assert_eq!(decode_png(&files.png).0, bar_chart_size(0).0);
    assert!(fs::read_to_string(&files.markdown)
        .unwrap()
        .contains("0 seed(s) (none)"));
}

#[test]
fn line_plot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.png");
    let series = vec![
        (
            "mam".to_string(),
            vec![(1.0, 50.0), (8.0, 60.0), (32.0, 63.0)],
        ),
        (
            "uniform_mean".to_string(),
            vec![(1.0, 50.0), (8.0, 55.0), (32.0, 52.0)],
        ),
    ];
    plot_lines(&path, "top-1 vs k", "k", "top-1 (%)", &series).unwrap();
    let (w, h, _) = decode_png(&path);
    assert_eq!((w, h), LINE_CHART_SIZE);

    // Degenerate inputs draw too.
    plot_lines(
        &path,
        "one point",
        "x",
        "y",
        &[("a".into(), vec![(1.0, 1.0)])],
    )
    .unwrap();
    plot_lines(&path, "nothing", "x", "y", &[]).unwrap();

    let err = plot_lines(
        &path,
        "t",
        "x",
        "y",
        &[("bad".into(), vec![(f64::NAN, 1.0)])],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("k.png") && err.contains("\"bad\""), "{err}");
}
