//! Reading entry metadata (a source and a caption per row) from parquet
//! files: clip-retrieval's `metadata/*.parquet`, or a parquet given to
//! `import` as `--metadata`. The source is taken from the first non-null of
//! the columns `url`, `image_path`, `source`, `path`; the caption from
//! `caption`; the class name of a labelled entry from `label`. Other
//! columns are ignored.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use super::MetadataEntry;
use crate::error::{IoContext, Result, StoreError};

pub(super) fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> StoreError {
    StoreError::Invalid {
        path: path.to_path_buf(),
        reason: format!("cannot read as parquet: {e}"),
    }
}

fn open_parquet(path: &Path) -> Result<SerializedFileReader<File>> {
    let file = File::open(path).at(path, "open")?;
    SerializedFileReader::new(file).map_err(|e| parquet_error(path, e))
}

/// Rows of a parquet file, from its footer.
pub(super) fn parquet_rows(path: &Path) -> Result<u64> {
    let reader = open_parquet(path)?;
    let n = reader.metadata().file_metadata().num_rows();
    u64::try_from(n).map_err(|_| StoreError::Invalid {
        path: path.to_path_buf(),
        reason: format!("the footer gives a negative row count {n}"),
    })
}

/// Streams `source` / `caption` out of a metadata parquet.
pub(super) struct ParquetMetadata {
    path: PathBuf,
    /// `None` when the file has neither a source nor a caption column.
    rows: Option<RowIter<'static>>,
    row: usize,
}

impl ParquetMetadata {
    /// Opens `path` and positions it at row `skip`.
    pub(super) fn open(path: &Path, skip: usize) -> Result<Self> {
        let reader = open_parquet(path)?;
        let schema = reader.metadata().file_metadata().schema();
        let field = |name: &str| {
            schema
                .get_fields()
                .iter()
                .find(|f| f.name() == name)
                .cloned()
        };
        let projected: Vec<_> = ["url", "image_path", "source", "path", "caption", "label"]
            .into_iter()
            .filter_map(field)
            .collect();
        let rows = if projected.is_empty() {
            None
        } else {
            let projection = Type::group_type_builder(schema.name())
                .with_fields(projected)
                .build()
                .map_err(|e| parquet_error(path, e))?;
            let iter = RowIter::from_file_into(Box::new(reader))
                .project(Some(projection))
                .map_err(|e| parquet_error(path, e))?;
            Some(iter)
        };
        let mut this = ParquetMetadata {
            path: path.to_path_buf(),
            rows,
            row: 0,
        };
        let mut discard = Vec::new();
        for _ in 0..skip {
            discard.clear();
            this.read(1, &mut discard)?;
        }
        Ok(this)
    }

    pub(super) fn read(&mut self, n: usize, out: &mut Vec<MetadataEntry>) -> Result<()> {
        let Some(rows) = self.rows.as_mut() else {
            out.resize(out.len() + n, MetadataEntry::default());
            self.row += n;
            return Ok(());
        };
        for _ in 0..n {
            let row: Row = match rows.next() {
                Some(r) => r.map_err(|e| parquet_error(&self.path, e))?,
                None => {
                    return Err(StoreError::Invalid {
                        path: self.path.clone(),
                        reason: format!("ends before row {}", self.row),
                    })
                }
            };
            // The source is the first non-null of these columns, in this order.
            let mut sources: [Option<String>; 4] = Default::default();
            let mut caption = None;
            let mut label = None;
            for (name, field) in row.get_column_iter() {
                let value = field_text(&self.path, self.row, field, name)?;
                match name.as_str() {
                    "url" => sources[0] = value,
                    "image_path" => sources[1] = value,
                    "source" => sources[2] = value,
                    "path" => sources[3] = value,
                    "label" => label = value,
                    _ => caption = value,
                }
            }
            let entry = MetadataEntry {
                source: sources.into_iter().flatten().next(),
                caption,
                label,
            };
            out.push(entry);
            self.row += 1;
        }
        Ok(())
    }
}

/// A column value as text: strings as they are, null as `None`, other
/// scalars in their display form.
fn field_text(path: &Path, row: usize, field: &Field, column: &str) -> Result<Option<String>> {
    Ok(match field {
        Field::Null => None,
        Field::Str(s) => Some(s.clone()),
        Field::Bytes(b) => Some(
            std::str::from_utf8(b.data())
                .map_err(|_| StoreError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("row {}: column {column} is not UTF-8 text", row),
                })?
                .to_string(),
        ),
        Field::Group(_) | Field::ListInternal(_) | Field::MapInternal(_) => {
            return Err(StoreError::Invalid {
                path: path.to_path_buf(),
                reason: format!("row {}: column {column} is nested; expected a string", row),
            })
        }
        other => Some(other.to_string()),
    })
}

/// Every row's metadata of a parquet file (see the module docs for the columns).
pub fn read_parquet_metadata(path: &Path) -> Result<Vec<MetadataEntry>> {
    let rows = usize::try_from(parquet_rows(path)?).map_err(|_| StoreError::Invalid {
        path: path.to_path_buf(),
        reason: "too many rows for this machine".into(),
    })?;
    let mut out = Vec::with_capacity(rows);
    ParquetMetadata::open(path, 0)?.read(rows, &mut out)?;
    Ok(out)
}
