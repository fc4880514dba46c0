use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading a data set or building a
/// protocol from it.
///
/// Every variant names what it concerns (the file and line, the shard and
/// sample key, the class, or the dataset spec), so a message printed on its
/// own tells the user where to look.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },

    /// A malformed line in a list file or a class-names file.
    #[error("{}:{line}: {problem}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        problem: String,
    },

    /// A list file names an image that does not exist under the root.
    #[error("{}:{line}: image {} does not exist", list.display(), image.display())]
    MissingImage {
        list: PathBuf,
        line: usize,
        image: PathBuf,
    },

    /// A file or directory that should hold examples holds none.
    #[error("{}: {what}", path.display())]
    Empty { path: PathBuf, what: String },

    /// A class without a single example.
    #[error("{what}: class {class} has no examples")]
    EmptyClass { what: String, class: String },

    /// A malformed or truncated IDX (MNIST-format) file, or two IDX files
    /// that do not agree with each other.
    #[error("{}: {problem}", path.display())]
    Idx { path: PathBuf, problem: String },

    /// A malformed sample in a webdataset tar shard.
    #[error("{}: sample {key}: {problem}", shard.display())]
    Shard {
        shard: PathBuf,
        key: String,
        problem: String,
    },

    /// A dataset spec string that cannot be understood.
    #[error("dataset spec `{spec}`: {problem}")]
    Spec { spec: String, problem: String },

    /// Loading the data set described by a spec failed.
    #[error("dataset `{spec}`: {error}")]
    Load { spec: String, error: Box<DataError> },

    /// An image that cannot be decoded; `what` is [`crate::ImageSource::describe`].
    #[error("{what}: corrupt or unsupported {format} image: {error}")]
    Image {
        what: String,
        /// The format its content announces.
        format: String,
        error: image::ImageError,
    },

    /// Labels, class names or protocol parameters that do not fit together.
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    path: impl Into<PathBuf>,
    action: &'static str,
) -> impl FnOnce(io::Error) -> DataError {
    let path = path.into();
    move |error| DataError::Io {
        path,
        action,
        error,
    }
}
