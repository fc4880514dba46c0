//! Evaluation for ramem: predictions to metrics, metrics to reports.
//!
//! * [`metrics`]: top-1, top-k (k = min(5, classes)) and the long-tail
//!   many/medium/few-shot top-1 (classes with > 100, 20..=100 and < 20
//!   training images), plus per-class top-1, from a row-major score matrix
//!   ([`evaluate`]) or hard predictions ([`evaluate_predictions`]). **All
//!   accuracies are percentages in `0..=100`.** Ties in the argmax go to the
//!   lowest class index.
//! * [`aggregate`]: mean and sample standard deviation of each metric over
//!   the seeds of each (method, variant).
//! * [`report`]: the [`Report`] (runs + summary), written as `report.json`
//!   (schema in `docs/REPORT.md`), `report.md` ([`markdown`]) and
//!   `report.png` ([`plot`]), every file atomically; [`axes`] plots top-1
//!   against each study axis (pollution, memory size, k).
//!
//! ```
//! use ramem_eval::{evaluate, Report, Run};
//! # let dir = tempfile::tempdir()?;
//! // Two test images, three classes; class 0 is many-shot, 1 medium, 2 few.
//! let scores = [0.9, 0.1, 0.0, /* */ 0.2, 0.7, 0.1];
//! let metrics = evaluate(&scores, 3, &[0, 2], &[500, 50, 5])?;
//! assert_eq!(metrics.top1, 50.0);
//! assert_eq!((metrics.many, metrics.medium, metrics.few), (Some(100.0), None, Some(0.0)));
//!
//! let mut report = Report::new("toy").with_dataset("classes", 3);
//! report.add_run(Run::new("linear_probe", "", 0, metrics).with_times(Some(1.5), Some(0.1)));
//! let files = report.write(dir.path())?;
//! assert_eq!(Report::read(&files.json)?.runs, report.runs);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod aggregate;
pub mod axes;
mod error;
pub mod markdown;
pub mod metrics;
pub mod plot;
pub mod report;

pub use aggregate::{summarize, Stat, Summary};
pub use axes::write_axis_plots;
pub use error::{EvalError, Result};
pub use metrics::{evaluate, evaluate_method, evaluate_predictions, Metrics, ShotGroup};
pub use plot::plot_lines;
pub use report::{Report, ReportFiles, Run, SCHEMA_VERSION};
