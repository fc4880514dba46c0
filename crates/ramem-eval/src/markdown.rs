//! The Markdown table of a report: one row per (method, variant), each metric
//! as `mean ± std` over seeds, the best mean of each column in bold.

use std::fmt::Write;

use serde_json::Value;

use crate::aggregate::{Stat, Summary};
use crate::report::Report;

/// Decimals shown for accuracies.
const DECIMALS: usize = 2;

/// The columns after Method, Variant and Seeds.
const COLUMNS: [&str; 5] = ["Top-1", "Top-5", "Many", "Medium", "Few"];

fn column(s: &Summary, c: usize) -> Option<&Stat> {
    match c {
        0 => Some(&s.top1),
        1 => s.top5.as_ref(),
        2 => s.many.as_ref(),
        3 => s.medium.as_ref(),
        _ => s.few.as_ref(),
    }
}

/// Renders `report` (whose summary must be current) as Markdown.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let seeds = report.seeds();
    let seed_list = seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "# {}\n", escape(&report.benchmark));
    let _ = writeln!(
        out,
        "Benchmark `{}`, {} run(s), {} seed(s) ({}), created {}. Accuracies in %, \
         mean ± sample standard deviation over seeds; best mean per column in bold. \
         Shot groups by training images per class: many > 100, medium 20–100, few < 20.\n",
        report.benchmark.replace('`', "'"),
        report.runs.len(),
        seeds.len(),
        if seed_list.is_empty() {
            "none"
        } else {
            &seed_list
        },
        report.created_rfc3339(),
    );
    if !report.dataset.is_empty() {
        let items: Vec<String> = report
            .dataset
            .iter()
            .map(|(k, v)| format!("{}: {}", escape(k), escape(&value_text(v))))
            .collect();
        let _ = writeln!(out, "Dataset: {}.\n", items.join(", "));
    }

    let _ = writeln!(
        out,
        "| Method | Variant | Seeds | {} |",
        COLUMNS.join(" | ")
    );
    let _ = writeln!(out, "|---|---|---:|{}", "---:|".repeat(COLUMNS.len()));

    // The best mean of each column, compared as displayed.
    let best: Vec<Option<String>> = (0..COLUMNS.len())
        .map(|c| {
            report
                .summary
                .iter()
                .filter_map(|s| column(s, c).map(|st| st.mean))
                .filter(|m| m.is_finite())
                .fold(None, |acc: Option<f64>, m| {
                    Some(acc.map_or(m, |a| a.max(m)))
                })
                .map(|m| format!("{m:.DECIMALS$}"))
        })
        .collect();

    for s in &report.summary {
        let mut cells = vec![escape(&s.method), escape(&s.variant), s.n_seeds.to_string()];
        for (c, best) in best.iter().enumerate() {
            cells.push(match column(s, c) {
                None => "–".to_string(),
                Some(st) => {
                    let mean = format!("{:.DECIMALS$}", st.mean);
                    let text = match st.std {
                        Some(sd) => format!("{mean} ± {sd:.DECIMALS$}"),
                        None => mean.clone(),
                    };
                    if best.as_deref() == Some(mean.as_str()) {
                        format!("**{text}**")
                    } else {
                        text
                    }
                }
            });
        }
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Makes free text safe inside a Markdown table cell.
fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}
