//! One-line dataset specs for command lines: `KIND:BODY[;key=value...]`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::{
    check_class_names, numeric_class_names, protocol, read_class_folders, read_class_names,
    read_idx, read_list_file, read_openclipart, read_webdataset, Example, ImageShift, ImageSource,
    LabelledSet, TrainTest, FASHION_MNIST_CLASSES,
};

/// How a data set without a given train/test split is split
/// ([`crate::protocol::stratified_split`]); options `test=F` and `seed=N`,
/// default `test=0.2;seed=0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    pub test_fraction: f64,
    pub seed: u64,
}

impl Default for Split {
    fn default() -> Self {
        Split {
            test_fraction: 0.2,
            seed: 0,
        }
    }
}

/// Where class names come from (option `names=`): a file with one name per
/// line, or `fashion-mnist` for [`FASHION_MNIST_CLASSES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassNames {
    File(PathBuf),
    FashionMnist,
}

impl ClassNames {
    fn load(&self) -> Result<Vec<String>> {
        match self {
            ClassNames::File(path) => read_class_names(path),
            ClassNames::FashionMnist => Ok(FASHION_MNIST_CLASSES.map(String::from).to_vec()),
        }
    }
}

impl fmt::Display for ClassNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassNames::File(path) => write!(f, "{}", path.display()),
            ClassNames::FashionMnist => f.write_str("fashion-mnist"),
        }
    }
}

/// A data set named on one line, as [`parse_dataset_spec`] reads it:
/// `KIND:BODY`, optionally followed by `;key=value` options.
///
/// | spec | reads | options |
/// |---|---|---|
/// | `idx:DIR` | [`read_idx`] | `names` |
/// | `list:TRAIN_LIST,TEST_LIST[@ROOT]` | [`read_list_file`] (ROOT defaults to the train list's directory) | `names`, `classes` |
/// | `folders:DIR` | `DIR/train` and `DIR/test` if both exist, else `DIR` split | `test`, `seed` |
/// | `openclipart:DIR` | [`read_openclipart`], split | `min` (default 1), `max`, `shift`, `test`, `seed` |
/// | `wds:SHARDS[\|TEST_SHARDS]` | [`read_webdataset`]; without test shards, split | `names`, `test`, `seed` |
///
/// SHARDS is a comma-separated list of tar files, directories (every `.tar`
/// in them) and glob patterns. Options: `names=FILE|fashion-mnist` (class
/// names), `classes=N` (number of classes), `min=N` (smallest class kept),
/// `max=N` (images kept per class, drawn with the split's seed), `shift=S`
/// (the test images shown another way, [`ImageShift::parse`]: `grey+48px`),
/// `test=F` and `seed=N` (the [`Split`] where none is given).
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSpec {
    Idx {
        dir: PathBuf,
        class_names: Option<ClassNames>,
    },
    List {
        train: PathBuf,
        test: PathBuf,
        root: PathBuf,
        class_names: Option<ClassNames>,
        num_classes: Option<usize>,
    },
    Folders {
        dir: PathBuf,
        split: Split,
    },
    OpenClipArt {
        dir: PathBuf,
        min_images_per_class: usize,
        /// At most this many images per class (option `max`), drawn with
        /// the split's seed before splitting: a small data set of few
        /// images per class, its test split as imbalanced as its training
        /// split.
        max_images_per_class: Option<usize>,
        split: Split,
        /// Applied to the test images only (option `shift`).
        shift: Option<ImageShift>,
    },
    WebDataset {
        train: Vec<String>,
        test: Option<Vec<String>>,
        class_names: Option<ClassNames>,
        split: Split,
    },
}

/// Parses a dataset spec (see [`DatasetSpec`]). Errors name the spec.
pub fn parse_dataset_spec(spec: &str) -> Result<DatasetSpec> {
    let bad = |problem: String| DataError::Spec {
        spec: spec.to_string(),
        problem,
    };
    let mut parts = spec.split(';');
    let head = parts.next().unwrap_or_default();
    let Some((kind, body)) = head.split_once(':') else {
        return Err(bad(
            "expected KIND:BODY with KIND one of idx, list, folders, openclipart, wds".into(),
        ));
    };
    if body.is_empty() {
        return Err(bad(format!("nothing after `{kind}:`")));
    }
    let mut options: Vec<(&str, &str)> = Vec::new();
    for part in parts {
        let Some((key, value)) = part.split_once('=') else {
            return Err(bad(format!("option `{part}` is not key=value")));
        };
        if options.iter().any(|(k, _)| *k == key) {
            return Err(bad(format!("option `{key}` is given twice")));
        }
        options.push((key, value));
    }
    let allowed: &[&str] = match kind {
        "idx" => &["names"],
        "list" => &["names", "classes"],
        "folders" => &["test", "seed"],
        "openclipart" => &["min", "max", "shift", "test", "seed"],
        "wds" => &["names", "test", "seed"],
        _ => {
            return Err(bad(format!(
                "unknown kind `{kind}` (expected idx, list, folders, openclipart or wds)"
            )))
        }
    };
    if let Some((key, _)) = options.iter().find(|(k, _)| !allowed.contains(k)) {
        return Err(bad(format!(
            "option `{key}` does not apply to {kind} (options: {})",
            allowed.join(", ")
        )));
    }
    let get = |key: &str| options.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let number = |key: &str| -> Result<Option<u64>> {
        get(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{key}={v}: expected a non-negative integer")))
            })
            .transpose()
    };
    let class_names = get("names").map(|v| match v {
        "fashion-mnist" => ClassNames::FashionMnist,
        file => ClassNames::File(PathBuf::from(file)),
    });
    let mut split = Split::default();
    if let Some(v) = get("test") {
        split.test_fraction = v
            .parse::<f64>()
            .ok()
            .filter(|f| *f > 0.0 && *f < 1.0)
            .ok_or_else(|| {
                bad(format!(
                    "test={v}: expected a fraction strictly between 0 and 1"
                ))
            })?;
    }
    if let Some(seed) = number("seed")? {
        split.seed = seed;
    }
    Ok(match kind {
        "idx" => DatasetSpec::Idx {
            dir: body.into(),
            class_names,
        },
        "list" => {
            let (lists, root) = match body.rsplit_once('@') {
                Some((lists, root)) => (lists, Some(root)),
                None => (body, None),
            };
            let Some((train, test)) = lists.split_once(',') else {
                return Err(bad("expected list:TRAIN_LIST,TEST_LIST[@ROOT]".into()));
            };
            if train.is_empty() || test.is_empty() || root == Some("") {
                return Err(bad("expected list:TRAIN_LIST,TEST_LIST[@ROOT]".into()));
            }
            let root = match root {
                Some(root) => PathBuf::from(root),
                None => Path::new(train)
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            };
            DatasetSpec::List {
                train: train.into(),
                test: test.into(),
                root,
                class_names,
                num_classes: number("classes")?.map(|n| n as usize),
            }
        }
        "folders" => DatasetSpec::Folders {
            dir: body.into(),
            split,
        },
        "openclipart" => DatasetSpec::OpenClipArt {
            dir: body.into(),
            min_images_per_class: number("min")?.unwrap_or(1) as usize,
            max_images_per_class: match number("max")? {
                Some(0) => return Err(bad("max=0: keep at least one image per class".into())),
                max => max.map(|m| m as usize),
            },
            split,
            shift: get("shift")
                .map(|v| ImageShift::parse(v).map_err(|e| bad(format!("shift={v}: {e}"))))
                .transpose()?,
        },
        _ => {
            let shard_list = |s: &str| -> Result<Vec<String>> {
                let items: Vec<String> = s.split(',').map(str::to_string).collect();
                if items.iter().any(String::is_empty) {
                    return Err(bad(format!("empty shard name in `{s}`")));
                }
                Ok(items)
            };
            let (train, test) = match body.split_once('|') {
                Some((train, test)) => (shard_list(train)?, Some(shard_list(test)?)),
                None => (shard_list(body)?, None),
            };
            DatasetSpec::WebDataset {
                train,
                test,
                class_names,
                split,
            }
        }
    })
}

impl std::str::FromStr for DatasetSpec {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        parse_dataset_spec(s)
    }
}

/// The canonical spec string (it parses back to the same spec).
impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |f: &mut fmt::Formatter<'_>, n: &Option<ClassNames>| match n {
            Some(n) => write!(f, ";names={n}"),
            None => Ok(()),
        };
        let split = |f: &mut fmt::Formatter<'_>, s: &Split| {
            write!(f, ";test={};seed={}", s.test_fraction, s.seed)
        };
        match self {
            DatasetSpec::Idx { dir, class_names } => {
                write!(f, "idx:{}", dir.display())?;
                names(f, class_names)
            }
            DatasetSpec::List {
                train,
                test,
                root,
                class_names,
                num_classes,
            } => {
                write!(
                    f,
                    "list:{},{}@{}",
                    train.display(),
                    test.display(),
                    root.display()
                )?;
                names(f, class_names)?;
                match num_classes {
                    Some(n) => write!(f, ";classes={n}"),
                    None => Ok(()),
                }
            }
            DatasetSpec::Folders { dir, split: s } => {
                write!(f, "folders:{}", dir.display())?;
                split(f, s)
            }
            DatasetSpec::OpenClipArt {
                dir,
                min_images_per_class,
                max_images_per_class,
                split: s,
                shift,
            } => {
                write!(
                    f,
                    "openclipart:{};min={min_images_per_class}",
                    dir.display()
                )?;
                if let Some(max) = max_images_per_class {
                    write!(f, ";max={max}")?;
                }
                if let Some(shift) = shift {
                    write!(f, ";shift={shift}")?;
                }
                split(f, s)
            }
            DatasetSpec::WebDataset {
                train,
                test,
                class_names,
                split: s,
            } => {
                write!(f, "wds:{}", train.join(","))?;
                if let Some(test) = test {
                    write!(f, "|{}", test.join(","))?;
                }
                names(f, class_names)?;
                split(f, s)
            }
        }
    }
}

impl DatasetSpec {
    /// Reads the data set into a train/test pair ([`load`]).
    pub fn load(&self) -> Result<TrainTest> {
        load(self)
    }
}

/// Reads the data set a spec names into a train/test pair with shared class
/// names, splitting it ([`TrainTest::split`]) where the format gives no
/// split. Errors name the spec and, inside it, the file concerned.
pub fn load(spec: &DatasetSpec) -> Result<TrainTest> {
    load_inner(spec).map_err(|e| match e {
        e @ DataError::Spec { .. } => e,
        e => DataError::Load {
            spec: spec.to_string(),
            error: Box::new(e),
        },
    })
}

fn load_inner(spec: &DatasetSpec) -> Result<TrainTest> {
    match spec {
        DatasetSpec::Idx { dir, class_names } => {
            let names = class_names.as_ref().map(ClassNames::load).transpose()?;
            read_idx(dir, names)
        }
        DatasetSpec::List {
            train,
            test,
            root,
            class_names,
            num_classes,
        } => {
            let train = read_list_file(train, root, *num_classes)?;
            let test = read_list_file(test, root, *num_classes)?;
            let names = match class_names {
                Some(n) => n.load()?,
                None => numeric_class_names(train.num_classes().max(test.num_classes())),
            };
            with_names(train, test, names)
        }
        DatasetSpec::Folders { dir, split } => {
            let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
            if train_dir.is_dir() && test_dir.is_dir() {
                let train = read_class_folders(&train_dir)?;
                let test = read_class_folders(&test_dir)?;
                align_test_classes(train, test)
            } else {
                TrainTest::split(&read_class_folders(dir)?, split.test_fraction, split.seed)
            }
        }
        DatasetSpec::OpenClipArt {
            dir,
            min_images_per_class,
            max_images_per_class,
            split,
            shift,
        } => {
            let mut set = read_openclipart(dir, *min_images_per_class)?;
            if let Some(max) = max_images_per_class {
                let kept = protocol::at_most_per_class(&set.labels(), *max, split.seed)?;
                set = set.subset(&kept, set.name.clone())?;
            }
            let mut pair = TrainTest::split(&set, split.test_fraction, split.seed)?;
            if let Some(shift) = shift {
                pair.test.examples = std::mem::take(&mut pair.test.examples)
                    .into_iter()
                    .map(|example| Example {
                        image: ImageSource::Shifted {
                            image: Box::new(example.image),
                            shift: *shift,
                        },
                        ..example
                    })
                    .collect();
            }
            Ok(pair)
        }
        DatasetSpec::WebDataset {
            train,
            test,
            class_names,
            split,
        } => {
            let train = read_webdataset(&expand_shards(spec, train)?)?;
            let names = class_names.as_ref().map(ClassNames::load).transpose()?;
            match test {
                Some(test) => {
                    let test = read_webdataset(&expand_shards(spec, test)?)?;
                    let names = names.unwrap_or_else(|| {
                        numeric_class_names(train.num_classes().max(test.num_classes()))
                    });
                    with_names(train, test, names)
                }
                None => {
                    let set = match names {
                        Some(names) => train.with_class_names(names)?,
                        None => train,
                    };
                    TrainTest::split(&set, split.test_fraction, split.seed)
                }
            }
        }
    }
}

/// Gives both sets the same class names, checking they cover every label.
fn with_names(
    mut train: LabelledSet,
    mut test: LabelledSet,
    names: Vec<String>,
) -> Result<TrainTest> {
    check_class_names(&train.name, &names, &train.labels())?;
    check_class_names(&test.name, &names, &test.labels())?;
    train.class_names = names.clone();
    test.class_names = names;
    Ok(TrainTest { train, test })
}

/// Relabels a test class-folder tree with the training tree's class indices;
/// a test class the training tree lacks is an error naming it.
fn align_test_classes(train: LabelledSet, mut test: LabelledSet) -> Result<TrainTest> {
    let mut map = Vec::with_capacity(test.num_classes());
    for name in &test.class_names {
        match train.class_names.iter().position(|n| n == name) {
            Some(i) => map.push(i),
            None => {
                return Err(DataError::Invalid(format!(
                    "{}: class folder `{name}` has no counterpart in {}",
                    test.name, train.name
                )))
            }
        }
    }
    for example in &mut test.examples {
        example.label = map[example.label];
    }
    test.class_names = train.class_names.clone();
    Ok(TrainTest { train, test })
}

/// Expands shard names: directories to their `.tar` files, glob patterns to
/// their matches (both sorted); plain names stay as they are.
fn expand_shards(spec: &DatasetSpec, items: &[String]) -> Result<Vec<PathBuf>> {
    let bad = |problem: String| DataError::Spec {
        spec: spec.to_string(),
        problem,
    };
    let mut shards = Vec::new();
    for item in items {
        let path = Path::new(item);
        if path.is_dir() {
            let mut tars: Vec<PathBuf> = crate::folders::sorted_entries(path)?
                .into_iter()
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "tar"))
                .collect();
            if tars.is_empty() {
                return Err(bad(format!("directory {item} has no .tar shards")));
            }
            shards.append(&mut tars);
        } else if item.contains(['*', '?', '[']) {
            let pattern =
                glob::glob(item).map_err(|e| bad(format!("bad pattern `{item}`: {e}")))?;
            let mut matches: Vec<PathBuf> = pattern.filter_map(|p| p.ok()).collect();
            matches.sort();
            if matches.is_empty() {
                return Err(bad(format!("pattern `{item}` matches no file")));
            }
            shards.append(&mut matches);
        } else {
            shards.push(path.to_path_buf());
        }
    }
    Ok(shards)
}

/// Which part of a data set a memory is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitChoice {
    /// The training split (what a study's memory holds).
    #[default]
    Train,
    Test,
    /// The training split, then the test split.
    All,
}

impl std::str::FromStr for SplitChoice {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<SplitChoice, String> {
        match text {
            "train" => Ok(SplitChoice::Train),
            "test" => Ok(SplitChoice::Test),
            "all" => Ok(SplitChoice::All),
            _ => Err(format!("unknown split {text:?}; known: train, test, all")),
        }
    }
}

/// The images of a data set to put in a memory: a split, and optionally
/// only some classes or all but some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub split: SplitChoice,
    /// Keep only these classes (by name); empty keeps every class.
    pub only_classes: Vec<String>,
    /// Leave these classes out (by name).
    pub skip_classes: Vec<String>,
}

/// Whether `text` reads as a data set spec (`idx:`, `list:`, `folders:`,
/// `openclipart:` or `wds:` followed by something) rather than a path.
pub fn is_dataset_spec(text: &str) -> bool {
    ["idx:", "list:", "folders:", "openclipart:", "wds:"]
        .iter()
        .any(|kind| text.len() > kind.len() && text.starts_with(kind))
}

/// The labelled images `selection` picks from the data set `spec`, each
/// with its class name as label and its example id as source (the id a
/// study matches a memory's entries to its training images by), and the
/// data set's class names (every class, in order, kept or not).
pub fn labelled_items(
    spec: &str,
    selection: &Selection,
) -> Result<(Vec<crate::ImageItem>, Vec<String>)> {
    let data = parse_dataset_spec(spec)?.load()?;
    let names = data.class_names().to_vec();
    let class_of = |name: &String| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| DataError::Spec {
                spec: spec.to_string(),
                problem: format!(
                    "no class named {name:?}; its classes are {}",
                    names
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    };
    let only = selection
        .only_classes
        .iter()
        .map(class_of)
        .collect::<Result<Vec<_>>>()?;
    let skip = selection
        .skip_classes
        .iter()
        .map(class_of)
        .collect::<Result<Vec<_>>>()?;
    let sets = match selection.split {
        SplitChoice::Train => vec![data.train],
        SplitChoice::Test => vec![data.test],
        SplitChoice::All => vec![data.train, data.test],
    };
    let items = sets
        .into_iter()
        .flat_map(|set| set.examples)
        .filter(|e| (only.is_empty() || only.contains(&e.label)) && !skip.contains(&e.label))
        .map(|e| crate::ImageItem {
            // Where the image is (a path, `IDXFILE#INDEX`, `SHARD#MEMBER`):
            // what a memory entry's source names, and what a server reads
            // to show it (`ImageSource::from_description`).
            source: e.image.describe(),
            id: e.id,
            image: e.image,
            caption: e.caption.map(crate::TextSource::Inline),
            label: Some(names[e.label].clone()),
        })
        .collect();
    Ok((items, names))
}
