//! Re-renders a report: reads `report.json` and writes `report.json`,
//! `report.md` and `report.png` into a directory.
//!
//! ```text
//! cargo run -p ramem-eval --example render_report -- path/to/report.json [out_dir]
//! cargo run -p ramem-eval --example render_report -- --demo out_dir
//! ```
//! `--demo` writes a made-up report, to look at the layout.

use std::process::ExitCode;

use ramem_eval::{Metrics, Report, Run};

fn demo() -> Report {
    let mut r = Report::new("demo_lt")
        .with_dataset("name", "made-up numbers")
        .with_dataset("classes", 1000);
    let methods = [
        ("linear_probe", "", 41.0),
        ("knn_vote", "k=10", 44.0),
        ("uniform_mean", "values=image,k=32", 47.0),
        ("tip_adapter_f", "alpha=1,beta=5.5", 49.0),
        ("mam", "values=image,k=32,memory=full", 53.0),
        ("mam", "values=text,k=32,memory=full", 55.0),
    ];
    for (method, variant, base) in methods {
        for seed in 0..3u64 {
            let jitter = seed as f64 * 0.6 - 0.6;
            let top1 = base + jitter;
            let m = Metrics {
                top1,
                top5: Some(top1 + 20.0),
                many: Some(top1 + 12.0),
                medium: Some(top1 - 3.0 + jitter),
                few: Some(top1 - 25.0 + 2.0 * jitter + (base - 41.0)),
                per_class: Vec::new(),
                n: 50_000,
            };
            r.add_run(Run::new(method, variant, seed, m).with_times(Some(10.0), Some(1.0)));
        }
    }
    r
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, out] if flag == "--demo" => demo().write(out).and_then(|_| {
            let curve = |base: f64| {
                [1.0, 4.0, 8.0, 16.0, 32.0, 64.0]
                    .iter()
                    .map(|&k: &f64| (k, base + 4.0 * k.ln() - 0.05 * k))
                    .collect::<Vec<_>>()
            };
            let series = [
                ("mam".to_string(), curve(48.0)),
                ("uniform_mean".to_string(), curve(45.0)),
            ];
            let path = std::path::Path::new(out).join("top1_vs_k.png");
            ramem_eval::plot_lines(path, "top-1 vs k", "k", "top-1 (%)", &series)
        }),
        [input] | [input, _] => Report::read(input).and_then(|r| {
            let out = args
                .get(1)
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::Path::new(input)
                        .parent()
                        .unwrap_or(std::path::Path::new("."))
                        .to_path_buf()
                });
            r.write(out).map(|_| ())
        }),
        _ => {
            eprintln!("usage: render_report REPORT.json [OUT_DIR] | render_report --demo OUT_DIR");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
