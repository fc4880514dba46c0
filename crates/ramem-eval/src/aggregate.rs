//! Mean and spread of metrics over seeds, per (method, variant).

use serde::{Deserialize, Serialize};

use crate::report::Run;

/// Mean and sample standard deviation of one metric over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (denominator n - 1); `None` with one value.
    pub std: Option<f64>,
    /// Number of values (seeds) that had this metric.
    pub n: usize,
}

impl Stat {
    /// The mean and sample standard deviation of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Stat> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Some(Stat { mean, std, n })
    }
}

/// The runs of one (method, variant) group, summarised over their seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub method: String,
    pub variant: String,
    /// Number of runs in the group.
    pub n_seeds: usize,
    /// The seeds of those runs, in run order.
    pub seeds: Vec<u64>,
    pub top1: Stat,
    /// Over the runs that have top-5 (hard-prediction runs do not).
    pub top5: Option<Stat>,
    /// Over the runs that have the group; `None` when none has.
    pub many: Option<Stat>,
    pub medium: Option<Stat>,
    pub few: Option<Stat>,
    pub train_seconds: Option<Stat>,
    pub eval_seconds: Option<Stat>,
}

/// Groups `runs` by (method, variant), in order of first appearance, and
/// summarises each group over its seeds.
pub fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut groups: Vec<(&str, &str, Vec<&Run>)> = Vec::new();
    for run in runs {
        match groups
            .iter_mut()
            .find(|(m, v, _)| *m == run.method && *v == run.variant)
        {
            Some((_, _, members)) => members.push(run),
            None => groups.push((&run.method, &run.variant, vec![run])),
        }
    }
    groups
        .into_iter()
        .map(|(method, variant, members)| {
            let stat = |f: &dyn Fn(&Run) -> Option<f64>| {
                Stat::of(&members.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            Summary {
                method: method.to_string(),
                variant: variant.to_string(),
                n_seeds: members.len(),
                seeds: members.iter().map(|r| r.seed).collect(),
                top1: stat(&|r| Some(r.metrics.top1)).expect("every group has a run"),
                top5: stat(&|r| r.metrics.top5),
                many: stat(&|r| r.metrics.many),
                medium: stat(&|r| r.metrics.medium),
                few: stat(&|r| r.metrics.few),
                train_seconds: stat(&|r| r.train_seconds),
                eval_seconds: stat(&|r| r.eval_seconds),
            }
        })
        .collect()
}
