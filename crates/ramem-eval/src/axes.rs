//! Line plots of a study's mean top-1 against each of its axes (memory
//! pollution, memory size, k) that has several points.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Result;
use crate::plot::plot_lines;
use crate::report::Report;

/// The run parameters that are study axes, each plotted to `AXIS.png`.
pub const AXES: [&str; 3] = ["pollution", "memory_size", "k"];

/// Writes `OUT/pollution.png`, `OUT/memory_size.png` and `OUT/k.png` for
/// the axes of `report` with at least two points: one line per method and
/// setting of the other axes, the mean top-1 over seeds at each point.
pub fn write_axis_plots(report: &Report, out: &Path) -> Result<()> {
    for axis in AXES {
        // series (method + the other axes) -> axis value -> top-1 per seed
        let mut series: BTreeMap<String, BTreeMap<String, (f64, Vec<f64>)>> = BTreeMap::new();
        for run in &report.runs {
            let Some(x) = run.params.get(axis).and_then(|v| v.as_f64()) else {
                continue;
            };
            let others: Vec<String> = ["values", "k", "memory_size"]
                .iter()
                .filter(|a| **a != axis && !(axis == "pollution" && **a == "memory_size"))
                .filter_map(|a| {
                    run.params
                        .get(*a)
                        .map(|v| format!("{a}={}", v.to_string().trim_matches('"')))
                })
                .collect();
            let name = format!("{} {}", run.method, others.join(","));
            series
                .entry(name)
                .or_default()
                .entry(format!("{x:020.6}"))
                .or_insert_with(|| (x, Vec::new()))
                .1
                .push(run.metrics.top1);
        }
        let lines: Vec<(String, Vec<(f64, f64)>)> = series
            .into_iter()
            .map(|(name, points)| {
                let pts = points
                    .into_values()
                    .map(|(x, ys)| (x, ys.iter().sum::<f64>() / ys.len() as f64))
                    .collect::<Vec<_>>();
                (name, pts)
            })
            .filter(|(_, pts)| pts.len() >= 2)
            .collect();
        if !lines.is_empty() {
            plot_lines(
                out.join(format!("{axis}.png")),
                &format!("{}: top-1 vs {axis}", report.benchmark),
                axis,
                "top-1 (%)",
                &lines,
            )?;
        }
    }
    Ok(())
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
        assert!(!dir.path().join("pollution.png").exists());
        assert!(!dir.path().join("memory_size.png").exists());
    }
}
