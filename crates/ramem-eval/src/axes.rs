//! Line plots of a study's mean top-1 (and few-shot top-1) against each of
//! its axes (memory pollution, memory size, k) that has several points.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::plot::plot_lines;
use crate::report::Report;

/// The run parameters that are study axes, each plotted to `AXIS.png`.
pub const AXES: [&str; 3] = ["pollution", "memory_size", "k"];

/// What a plot shows: its file name's suffix, the metric's name, the metric.
type Measure = (&'static str, &'static str, fn(&Metrics) -> Option<f64>);

const MEASURES: [Measure; 2] = [
    ("", "top-1", |m| Some(m.top1)),
    ("-few", "few-shot top-1", |m| m.few),
];

/// Writes `OUT/AXIS.png` (top-1) and `OUT/AXIS-few.png` (few-shot top-1,
/// where the runs have shot groups) for each axis of `report` with at
/// least two points: one line per method and setting of the other axes,
/// the mean over seeds at each point. Memory sizes that span a factor of
/// ten or more are drawn on a log10 axis.
pub fn write_axis_plots(report: &Report, out: &Path) -> Result<()> {
    for axis in AXES {
        for (suffix, what, metric) in MEASURES {
            let lines = axis_lines(report, axis, metric);
            if lines.is_empty() {
                continue;
            }
            let (lo, hi) = lines
                .iter()
                .flat_map(|(_, pts)| pts.iter().map(|p| p.0))
                .fold((f64::INFINITY, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
            let log = axis == "memory_size" && lo > 0.0 && hi / lo >= 10.0;
            let lines: Vec<(String, Vec<(f64, f64)>)> = match log {
                true => lines
                    .into_iter()
                    .map(|(name, pts)| {
                        (name, pts.into_iter().map(|(x, y)| (x.log10(), y)).collect())
                    })
                    .collect(),
                false => lines,
            };
            let x_label = match log {
                true => format!("log10({axis})"),
                false => axis.to_string(),
            };
            plot_lines(
                out.join(format!("{axis}{suffix}.png")),
                &format!("{}: {what} vs {axis}", report.benchmark),
                &x_label,
                &format!("{what} (%)"),
                &lines,
            )?;
        }
    }
    Ok(())
}

/// The lines of `axis`: per series (method + the other axes), the mean of
/// `metric` over seeds at each point; series with fewer than two points
/// are left out.
fn axis_lines(
    report: &Report,
    axis: &str,
    metric: fn(&Metrics) -> Option<f64>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    // series -> axis value -> the metric per seed
    let mut series: BTreeMap<String, BTreeMap<String, (f64, Vec<f64>)>> = BTreeMap::new();
    for run in &report.runs {
        // A value a run's search chose (`auto_k`) is no point of a grid.
        let chosen = |a: &str| run.params.contains_key(&format!("auto_{a}"));
        if chosen(axis) {
            continue;
        }
        let Some(x) = run.params.get(axis).and_then(|v| v.as_f64()) else {
            continue;
        };
        let Some(y) = metric(&run.metrics) else {
            continue;
        };
        let others: Vec<String> = ["values", "k", "memory_size"]
            .iter()
            .filter(|a| **a != axis && !(axis == "pollution" && **a == "memory_size"))
            .filter_map(|a| match chosen(a) {
                true => Some(format!("{a}=auto")),
                false => run
                    .params
                    .get(*a)
                    .map(|v| format!("{a}={}", v.to_string().trim_matches('"'))),
            })
            .collect();
        let name = format!("{} {}", run.method, others.join(","));
        series
            .entry(name)
            .or_default()
            .entry(format!("{x:020.6}"))
            .or_insert_with(|| (x, Vec::new()))
            .1
            .push(y);
    }
    series
        .into_iter()
        .map(|(name, points)| {
            let pts = points
                .into_values()
                .map(|(x, ys)| (x, ys.iter().sum::<f64>() / ys.len() as f64))
                .collect::<Vec<_>>();
            (name, pts)
        })
        .filter(|(_, pts)| pts.len() >= 2)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Metrics, Run};

    #[test]
    fn an_axis_with_two_points_is_plotted_and_one_with_a_single_point_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = |top1| Metrics {
            top1,
            top5: None,
            many: None,
            medium: None,
            few: None,
            per_class: Vec::new(),
            n: 1,
        };
        let mut report = Report::new("axes");
        for (k, top1) in [(8, 60.0), (32, 70.0)] {
            report.add_run(
                Run::new("mam", format!("k={k}"), 0, metrics(top1))
                    .with_param("k", k)
                    .with_param("pollution", 0.0),
            );
        }
        write_axis_plots(&report, dir.path()).unwrap();
        assert!(dir.path().join("k.png").is_file());
        assert!(
            !dir.path().join("k-few.png").exists(),
            "no shot groups, no few-shot plot"
        );
        assert!(!dir.path().join("pollution.png").exists());
        assert!(!dir.path().join("memory_size.png").exists());

        // k chosen per seed by a search (`auto_k`) is no axis, and runs at
        // two pollution levels stay one series whatever k each chose.
        let mut report = Report::new("auto");
        for (seed, k, pollution) in [(0, 8, 0.0), (1, 32, 0.0), (0, 16, 0.5), (1, 64, 0.5)] {
            report.add_run(
                Run::new("mam", "k=auto", seed, metrics(60.0))
                    .with_param("k", k)
                    .with_param("auto_k", k)
                    .with_param("pollution", pollution),
            );
        }
        assert!(axis_lines(&report, "k", |m| Some(m.top1)).is_empty());
        let lines = axis_lines(&report, "pollution", |m| Some(m.top1));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].0, "mam k=auto");
        assert_eq!(lines[0].1.len(), 2);
    }
}
