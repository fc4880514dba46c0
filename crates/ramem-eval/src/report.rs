//! The benchmark report: runs, their summary over seeds, and its files.
//!
//! The JSON schema is described field by field in `docs/REPORT.md`.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::aggregate::{summarize, Summary};
use crate::error::{EvalError, Result};
use crate::metrics::Metrics;

/// The version of the `report.json` schema written by this crate. Reading
/// accepts this version and older ones.
pub const SCHEMA_VERSION: u32 = 1;

/// File names written by [`Report::write`].
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";
pub const REPORT_PNG: &str = "report.png";

/// One evaluation of one method variant with one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Method name, e.g. `mam`, `linear_probe`, `knn_vote`, `uniform_mean`,
    /// `tip_adapter`, `tip_adapter_f`.
    pub method: String,
    /// Free-form variant, e.g. `values=image,k=32,memory=full`; runs with the
    /// same method and variant are seeds of one configuration.
    pub variant: String,
    /// Free-form parameters of the run (hyper-parameters, paths, ...).
    #[serde(default)]
    pub params: Map<String, Value>,
    pub seed: u64,
    /// The metrics, stored as top-level fields of the run object.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Training wall time in seconds; `None` when not measured or nothing is
    /// trained.
    #[serde(default)]
    pub train_seconds: Option<f64>,
    /// Evaluation wall time in seconds; `None` when not measured.
    #[serde(default)]
    pub eval_seconds: Option<f64>,
}

impl Run {
    /// A run with no parameters and no timings.
    pub fn new(
        method: impl Into<String>,
        variant: impl Into<String>,
        seed: u64,
        metrics: Metrics,
    ) -> Run {
        Run {
            method: method.into(),
            variant: variant.into(),
            params: Map::new(),
            seed,
            metrics,
            train_seconds: None,
            eval_seconds: None,
        }
    }

    /// Adds one parameter.
    pub fn with_param(mut self, key: impl Into<String>, value: impl Into<Value>) -> Run {
        self.params.insert(key.into(), value.into());
        self
    }

    /// Sets the training and evaluation wall times in seconds.
    pub fn with_times(mut self, train_seconds: Option<f64>, eval_seconds: Option<f64>) -> Run {
        self.train_seconds = train_seconds;
        self.eval_seconds = eval_seconds;
        self
    }

    /// A description of the first non-finite number in the run, if any.
    fn non_finite(&self) -> Option<String> {
        let m = &self.metrics;
        let named = [
            ("top1", Some(m.top1)),
            ("top5", m.top5),
            ("many", m.many),
            ("medium", m.medium),
            ("few", m.few),
            ("train_seconds", self.train_seconds),
            ("eval_seconds", self.eval_seconds),
        ];
        let bad = named
            .iter()
            .find(|(_, v)| v.is_some_and(|v| !v.is_finite()))
            .map(|(name, v)| format!("{name} = {}", v.unwrap_or_default()))
            .or_else(|| {
                m.per_class
                    .iter()
                    .position(|v| v.is_some_and(|v| !v.is_finite()))
                    .map(|c| format!("per_class[{c}] is not finite"))
            })?;
        Some(format!(
            "run {} / {} / seed {}: {bad}",
            self.method, self.variant, self.seed
        ))
    }
}

/// A benchmark report: what was run on which data, every run, and the
/// summary over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Version of this schema; see [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Benchmark name, e.g. `imagenet_lt`.
    pub benchmark: String,
    /// When the report was created (RFC 3339, UTC).
    pub created: DateTime<Utc>,
    /// Free-form description of the data: name, split, classes, sizes, ...
    #[serde(default)]
    pub dataset: Map<String, Value>,
    pub runs: Vec<Run>,
    /// Derived from `runs` by [`summarize`]: kept up to date by
    /// [`Report::add_run`], recomputed by [`Report::write`] and
    /// [`Report::read`].
    #[serde(default)]
    pub summary: Vec<Summary>,
}

impl Report {
    /// An empty report created now (to the second).
    pub fn new(benchmark: impl Into<String>) -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            benchmark: benchmark.into(),
            created: Utc::now().trunc_subsecs(0),
            dataset: Map::new(),
            runs: Vec::new(),
            summary: Vec::new(),
        }
    }

    /// Adds one dataset entry.
    pub fn with_dataset(mut self, key: impl Into<String>, value: impl Into<Value>) -> Report {
        self.dataset.insert(key.into(), value.into());
        self
    }

    /// Appends a run and updates the summary.
    pub fn add_run(&mut self, run: Run) {
        self.runs.push(run);
        self.summary = summarize(&self.runs);
    }

    /// Recomputes the summary from the runs.
    pub fn update_summary(&mut self) {
        self.summary = summarize(&self.runs);
    }

    /// All distinct seeds of the runs, ascending.
    pub fn seeds(&self) -> Vec<u64> {
        let mut seeds: Vec<u64> = self.runs.iter().map(|r| r.seed).collect();
        seeds.sort_unstable();
        seeds.dedup();
        seeds
    }

    /// `created` as written in the JSON (RFC 3339, seconds, `Z`).
    pub fn created_rfc3339(&self) -> String {
        self.created.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// The report as pretty-printed JSON, with its summary recomputed.
    ///
    /// `path` names the destination in the error raised for a non-finite
    /// number (JSON cannot represent one).
    pub fn to_json(&self, path: &Path) -> Result<String> {
        if let Some(reason) = self.runs.iter().find_map(Run::non_finite) {
            return Err(EvalError::InvalidReport {
                path: path.to_path_buf(),
                reason,
            });
        }
        let mut fresh = self.clone();
        fresh.update_summary();
        let mut json = serde_json::to_string_pretty(&fresh).map_err(|error| EvalError::Json {
            path: path.to_path_buf(),
            error,
        })?;
        json.push('\n');
        Ok(json)
    }

    /// The Markdown rendering; see [`crate::markdown`].
    pub fn to_markdown(&self) -> String {
        let mut fresh = self.clone();
        fresh.update_summary();
        crate::markdown::render(&fresh)
    }

    /// Draws the grouped bar chart of the summary to `path` (PNG).
    pub fn write_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let summary = summarize(&self.runs);
        let title = format!("{}: top-1 accuracy", self.benchmark);
        crate::plot::plot_summary(path.as_ref(), &title, &summary)
    }

    /// Writes `report.json`, `report.md` and `report.png` into `dir`
    /// (created if missing), each atomically, and returns their paths.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<ReportFiles> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|error| EvalError::Io {
            path: dir.to_path_buf(),
            action: "create report directory",
            error,
        })?;
        let files = ReportFiles {
            json: dir.join(REPORT_JSON),
            markdown: dir.join(REPORT_MD),
            png: dir.join(REPORT_PNG),
        };
        let json = self.to_json(&files.json)?;
        ramem_store::write_atomic(&files.json, json.as_bytes())?;
        ramem_store::write_atomic(&files.markdown, self.to_markdown().as_bytes())?;
        self.write_png(&files.png)?;
        Ok(files)
    }

    /// Reads a `report.json`, checks its schema version and recomputes the
    /// summary from its runs.
    pub fn read(path: impl AsRef<Path>) -> Result<Report> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|error| EvalError::Io {
            path: path.to_path_buf(),
            action: "read report",
            error,
        })?;
        let mut report: Report = serde_json::from_str(&text).map_err(|error| EvalError::Json {
            path: path.to_path_buf(),
            error,
        })?;
        if report.schema_version > SCHEMA_VERSION {
            return Err(EvalError::InvalidReport {
                path: path.to_path_buf(),
                reason: format!(
                    "schema_version {} is newer than this program's {SCHEMA_VERSION}",
                    report.schema_version
                ),
            });
        }
        report.update_summary();
        Ok(report)
    }
}

/// The paths written by [`Report::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub png: PathBuf,
}
