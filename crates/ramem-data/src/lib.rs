//! Labelled image data sets for ramem, and the evaluation protocols built on
//! them.
//!
//! This crate reads the formats people keep labelled images in and turns each
//! into one shape, a [`LabelledSet`] of [`Example`]s (an image source, an
//! integer label, an optional caption) with its class names, or a
//! [`TrainTest`] pair sharing one class list:
//!
//! - list files, one `relative/path label` per line as in ImageNet-LT and
//!   Places-LT ([`read_list_file`]);
//! - class-per-folder image trees ([`read_class_folders`]);
//! - MNIST-format IDX directories, gzipped or not, such as Fashion-MNIST
//!   ([`read_idx`]);
//! - the Open Clip Art tree of PNGs with parallel SVGs whose metadata gives
//!   captions ([`read_openclipart`]);
//! - webdataset tar shards with `.cls` labels ([`read_webdataset`]).
//!
//! The same readers serve unlabelled input, where a memory is built from
//! images and their captions: [`list_images`] (an image directory, a list
//! file or one image file) and [`read_webdataset_items`] give
//! [`ImageItem`]s (an image source and, where the input has one, a caption
//! source). Every reader recognises images by [`IMAGE_EXTENSIONS`].
//!
//! A one-line [`DatasetSpec`] (`idx:DIR`, `list:TRAIN,TEST@ROOT`,
//! `folders:DIR`, `openclipart:DIR`, `wds:SHARDS`) names any of them for a
//! command line, and [`load`] reads it into a [`TrainTest`].
//!
//! The [`protocol`] module builds the evaluation protocols on top: long-tailed
//! subsets of balanced sets (the CIFAR-LT rule), symmetric and asymmetric
//! label noise, stratified splits and many/medium/few-shot class groups. All
//! randomness comes from a seeded generator ([`SeededRng`]), so a seed gives
//! the same subset on every platform.
//!
//! Images are not decoded while a set is read: [`ImageSource::load`] decodes
//! one when it is needed (through [`decode_image`], the one decoder, which
//! tells an empty file, an unknown format and a corrupt image apart);
//! images inside tar shards are read from their byte range then. Errors ([`DataError`]) name the file, line, shard
//! sample or class concerned; malformed input is reported, never a panic.
//!
//! ```
//! use ramem_data::protocol::{long_tail_counts, symmetric_noise};
//! assert_eq!(
//!     long_tail_counts(10, 500, 100.0)?,
//!     [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
//! );
//! let labels = vec![0, 1, 2, 3, 0, 1, 2, 3];
//! let noisy = symmetric_noise(&labels, 4, 0.25, 0)?;
//! assert_eq!(noisy.flipped, 2);
//! # Ok::<(), ramem_data::DataError>(())
//! ```

mod error;
mod folders;
mod idx;
mod images;
mod list;
mod openclipart;
pub mod protocol;
mod rng;
mod shift;
mod sources;
mod spec;
mod webdataset;

pub use error::{DataError, Result};
pub use folders::{is_image, read_class_folders, IMAGE_EXTENSIONS};
pub use idx::{read_idx, read_idx_pair, FASHION_MNIST_CLASSES};
pub use images::{list_images, ImageFile, ImageItem};
pub use list::{read_class_names, read_list_file};
pub use openclipart::{read_openclipart, read_svg_caption};
pub use rng::SeededRng;
pub use shift::ImageShift;
pub use sources::{decode_image, image_dimensions, ImageSource, TarMember, TextSource};
pub use spec::{
    is_dataset_spec, labelled_items, load, parse_dataset_spec, ClassNames, DatasetSpec, Selection,
    Split, SplitChoice,
};
pub use webdataset::{read_webdataset, read_webdataset_items, scan_shard, ShardSample};

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// A name unique within its set: the path relative to the data set's
    /// root, `train#17` for IDX, `SHARD#KEY` for webdataset.
    pub id: String,
    pub image: ImageSource,
    /// Index into the set's `class_names`.
    pub label: usize,
    /// A text description where the format has one (webdataset `.txt`,
    /// Open Clip Art SVG metadata).
    pub caption: Option<String>,
}

/// A labelled set of images with its class names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelledSet {
    /// What the set is, for messages (e.g. `fashion-mnist train`).
    pub name: String,
    /// One name per class; every label is an index into it.
    pub class_names: Vec<String>,
    pub examples: Vec<Example>,
    /// Problems that did not stop the read but lost information (e.g. an
    /// unreadable SVG, so an example has no caption), one per line.
    pub warnings: Vec<String>,
}

impl LabelledSet {
    /// The number of classes (the length of `class_names`).
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether the set has no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Every example's label, in order.
    pub fn labels(&self) -> Vec<usize> {
        self.examples.iter().map(|e| e.label).collect()
    }

    /// The number of examples of each class.
    pub fn class_counts(&self) -> Result<Vec<usize>> {
        protocol::class_counts(&self.labels(), self.num_classes())
    }

    /// An error naming the first class (by name) with no examples.
    pub fn check_no_empty_class(&self) -> Result<()> {
        let counts = self.class_counts()?;
        match counts.iter().position(|&c| c == 0) {
            Some(c) => Err(DataError::EmptyClass {
                what: self.name.clone(),
                class: format!("{c} ({})", self.class_names[c]),
            }),
            None => Ok(()),
        }
    }

    /// The examples at `indices` (in that order), as a new set named `name`
    /// with the same classes. An index past the end is an error.
    pub fn subset(&self, indices: &[usize], name: impl Into<String>) -> Result<LabelledSet> {
        let examples = indices
            .iter()
            .map(|&i| {
                self.examples.get(i).cloned().ok_or_else(|| {
                    DataError::Invalid(format!(
                        "{}: index {i} is out of range for {} examples",
                        self.name,
                        self.len()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LabelledSet {
            name: name.into(),
            class_names: self.class_names.clone(),
            examples,
            warnings: self.warnings.clone(),
        })
    }

    /// The same examples with new labels (e.g. from
    /// [`protocol::symmetric_noise`]); each must be a valid class index.
    pub fn with_labels(&self, labels: &[usize]) -> Result<LabelledSet> {
        if labels.len() != self.len() {
            return Err(DataError::Invalid(format!(
                "{}: {} labels given for {} examples",
                self.name,
                labels.len(),
                self.len()
            )));
        }
        protocol::class_counts(labels, self.num_classes())?;
        let mut set = self.clone();
        for (example, &label) in set.examples.iter_mut().zip(labels) {
            example.label = label;
        }
        Ok(set)
    }

    /// The examples of the classes kept by `only` (every class when empty)
    /// less `skip`, both by name, relabelled over the kept classes in their
    /// order; with the positions of the kept examples. An unknown name is
    /// an error naming the set's classes.
    pub fn select_classes(
        &self,
        only: &[String],
        skip: &[String],
    ) -> Result<(LabelledSet, Vec<usize>)> {
        for name in only.iter().chain(skip) {
            if !self.class_names.contains(name) {
                return Err(DataError::Invalid(format!(
                    "{}: no class named {name:?}; its classes are {}",
                    self.name,
                    self.class_names
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let kept: Vec<usize> = (0..self.num_classes())
            .filter(|&c| {
                let name = &self.class_names[c];
                (only.is_empty() || only.contains(name)) && !skip.contains(name)
            })
            .collect();
        let mut new_label = vec![None; self.num_classes()];
        for (new, &old) in kept.iter().enumerate() {
            new_label[old] = Some(new);
        }
        let mut rows = Vec::new();
        let mut examples = Vec::new();
        for (i, example) in self.examples.iter().enumerate() {
            if let Some(label) = new_label[example.label] {
                rows.push(i);
                examples.push(Example {
                    label,
                    ..example.clone()
                });
            }
        }
        Ok((
            LabelledSet {
                name: self.name.clone(),
                class_names: kept.iter().map(|&c| self.class_names[c].clone()).collect(),
                examples,
                warnings: self.warnings.clone(),
            },
            rows,
        ))
    }

    /// Replaces numeric class names with `names`, which must have one entry
    /// per class (and at least one more than the largest label).
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<LabelledSet> {
        check_class_names(&self.name, &names, &self.labels())?;
        self.class_names = names;
        Ok(self)
    }
}

/// A training set and a test set over the same classes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrainTest {
    pub train: LabelledSet,
    pub test: LabelledSet,
}

impl TrainTest {
    /// The shared class names.
    pub fn class_names(&self) -> &[String] {
        &self.train.class_names
    }

    /// Splits one set into train and test with [`protocol::stratified_split`].
    pub fn split(set: &LabelledSet, test_fraction: f64, seed: u64) -> Result<TrainTest> {
        let (train, test) = protocol::stratified_split(&set.labels(), test_fraction, seed)?;
        Ok(TrainTest {
            train: set.subset(&train, format!("{} train", set.name))?,
            test: set.subset(&test, format!("{} test", set.name))?,
        })
    }
}

/// `0`, `1`, ... as class names.
pub(crate) fn numeric_class_names(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// Checks that `names` covers every label.
pub(crate) fn check_class_names(what: &str, names: &[String], labels: &[usize]) -> Result<()> {
    if let Some(&max) = labels.iter().max() {
        if max >= names.len() {
            return Err(DataError::Invalid(format!(
                "{what}: label {max} needs at least {} class names, but {} were given",
                max + 1,
                names.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod class_selection_tests {
    use super::*;

    fn set() -> LabelledSet {
        LabelledSet {
            name: "toy train".into(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            examples: [0, 1, 2, 1, 0]
                .iter()
                .enumerate()
                .map(|(i, &label)| Example {
                    id: format!("x{i}"),
                    image: ImageSource::File(format!("x{i}.png").into()),
                    label,
                    caption: None,
                })
                .collect(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn selected_classes_are_relabelled_in_their_order() {
        let (kept, rows) = set().select_classes(&[], &["b".into()]).unwrap();
        assert_eq!(kept.class_names, ["a", "c"]);
        assert_eq!(rows, [0, 2, 4]);
        assert_eq!(kept.labels(), [0, 1, 0]);
        let (kept, rows) = set().select_classes(&["b".into()], &[]).unwrap();
        assert_eq!(kept.class_names, ["b"]);
        assert_eq!((rows, kept.labels()), (vec![1, 3], vec![0, 0]));
        let err = set()
            .select_classes(&[], &["d".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("toy train") && err.contains("\"d\""), "{err}");
    }
}
