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
//! one when it is needed. Errors ([`DataError`]) name the file, line, shard
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
mod list;
mod openclipart;
pub mod protocol;
mod rng;
mod spec;
mod webdataset;

use std::io::Cursor;
use std::path::PathBuf;

pub use error::{DataError, Result};
pub use folders::{read_class_folders, IMAGE_EXTENSIONS};
pub use idx::{read_idx, read_idx_pair, FASHION_MNIST_CLASSES};
pub use list::{read_class_names, read_list_file};
pub use openclipart::{read_openclipart, read_svg_caption};
pub use rng::SeededRng;
pub use spec::{load, parse_dataset_spec, ClassNames, DatasetSpec, Split};
pub use webdataset::read_webdataset;

/// Where an example's image comes from. Nothing is decoded until
/// [`ImageSource::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An image file on disk.
    File(PathBuf),
    /// 8-bit grayscale pixels held in memory, row-major (one IDX image).
    Gray {
        /// The IDX file the pixels came from.
        file: PathBuf,
        /// The image's position in that file.
        index: usize,
        width: u32,
        height: u32,
        pixels: Vec<u8>,
    },
    /// An encoded image (JPEG, PNG, WebP...) held in memory, as read from a
    /// tar shard; `name` is `SHARD#MEMBER`.
    Encoded { name: String, bytes: Vec<u8> },
}

impl ImageSource {
    /// Decodes the image.
    pub fn load(&self) -> Result<image::DynamicImage> {
        let image_err = |source| DataError::Image {
            what: self.describe(),
            source,
        };
        match self {
            ImageSource::File(path) => image::ImageReader::open(path)
                .map_err(error::io_err(path, "open the image"))?
                .with_guessed_format()
                .map_err(error::io_err(path, "read the image"))?
                .decode()
                .map_err(image_err),
            ImageSource::Gray {
                width,
                height,
                pixels,
                ..
            } => image::GrayImage::from_raw(*width, *height, pixels.clone())
                .map(image::DynamicImage::ImageLuma8)
                .ok_or_else(|| {
                    DataError::Invalid(format!(
                        "{}: {} pixels do not make a {width}x{height} image",
                        self.describe(),
                        pixels.len()
                    ))
                }),
            ImageSource::Encoded { bytes, .. } => image::ImageReader::new(Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| DataError::Invalid(format!("{}: {e}", self.describe())))?
                .decode()
                .map_err(image_err),
        }
    }

    /// Where the image comes from, for messages: a path, `IDXFILE#INDEX`, or
    /// `SHARD#MEMBER`.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File(path) => path.display().to_string(),
            ImageSource::Gray { file, index, .. } => format!("{}#{index}", file.display()),
            ImageSource::Encoded { name, .. } => name.clone(),
        }
    }
}

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
