//! List files in the ImageNet-LT / Places-LT style.

use std::path::Path;

use crate::error::{io_err, DataError, Result};
use crate::{numeric_class_names, Example, ImageSource, LabelledSet};

/// Reads a list file of `relative/path label` lines, paths relative to
/// `root`.
///
/// The label is the last whitespace-separated token of a line, so paths may
/// contain spaces; blank lines are skipped. Every image must exist under
/// `root`. Class names are numeric (`0`, `1`, ...): `num_classes` of them if
/// given (labels at or past it are an error), else one more than the largest
/// label. Use [`LabelledSet::with_class_names`] with [`read_class_names`] for
/// real names.
pub fn read_list_file(list: &Path, root: &Path, num_classes: Option<usize>) -> Result<LabelledSet> {
    let text = std::fs::read_to_string(list).map_err(io_err(list, "read the list file"))?;
    let mut examples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |problem: String| DataError::BadLine {
            path: list.to_path_buf(),
            line: line_no,
            problem,
        };
        let Some(split) = line.rfind(char::is_whitespace) else {
            return Err(bad(format!(
                "expected `path label`, found `{line}` (no label)"
            )));
        };
        let (rel, label) = (line[..split].trim_end(), line[split..].trim_start());
        let label: usize = label.parse().map_err(|_| {
            bad(format!(
                "label `{label}` is not a non-negative integer (expected `path label`)"
            ))
        })?;
        if let Some(n) = num_classes {
            if label >= n {
                return Err(bad(format!(
                    "label {label} is out of range for {n} classes (0..={})",
                    n.saturating_sub(1)
                )));
            }
        }
        let path = root.join(rel);
        if !path.is_file() {
            return Err(DataError::MissingImage {
                list: list.to_path_buf(),
                line: line_no,
                image: path,
            });
        }
        examples.push(Example {
            id: rel.to_string(),
            image: ImageSource::File(path),
            label,
            caption: None,
        });
    }
    if examples.is_empty() {
        return Err(DataError::Empty {
            path: list.to_path_buf(),
            what: "the list file has no `path label` lines".into(),
        });
    }
    let n = num_classes.unwrap_or_else(|| examples.iter().map(|e| e.label).max().unwrap_or(0) + 1);
    Ok(LabelledSet {
        name: list.display().to_string(),
        class_names: numeric_class_names(n),
        examples,
        warnings: Vec::new(),
    })
}

/// Reads class names, one per line: line `i + 1` names class `i`. Blank
/// lines (other than at the end) and repeated names are errors, since they
/// would shift or merge classes.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path, "read the class names"))?;
    let mut names = Vec::new();
    for (i, line) in text.trim_end().lines().enumerate() {
        let name = line.trim();
        let bad = |problem: String| DataError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            problem,
        };
        if name.is_empty() {
            return Err(bad("empty class name".into()));
        }
        if let Some(first) = names.iter().position(|n| n == name) {
            return Err(bad(format!(
                "class name `{name}` repeats line {}",
                first + 1
            )));
        }
        names.push(name.to_string());
    }
    if names.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            what: "no class names".into(),
        });
    }
    Ok(names)
}
