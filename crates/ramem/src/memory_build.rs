//! `ramem memory build`: a memory straight from image-text data.
//!
//! Input is an image directory (captions in sidecar `x.txt` files next to
//! `x.jpg`) or webdataset tar shards (samples grouped by key: `000123.jpg` +
//! `000123.txt`). Keys are the image encoder's pooled embeddings (the memory
//! writer scales them to unit length); image values are the same embeddings,
//! raw; text values are the text encoder's caption embeddings (unit length),
//! and a row without a caption gets the embedding of the empty string.
//!
//! Resume: items are processed in a fixed order. `MEM/build-state.json`
//! records, for every shard, how many input items it covers (rows plus
//! skipped images) and the row count after it. That record is written
//! atomically *before* the shard's manifest commit, so after a crash the
//! state may hold one record more than the memory: a rerun takes the last
//! record whose row count equals the manifest's `count`, which says exactly
//! how many items are done; later records and their skips are dropped. A run
//! whose last items are all unreadable writes a final record with no shard.
//! The record also holds the skipped images (reported again at the end of
//! every run) and the plan: the item count, a fingerprint of the item ids,
//! the models and `--values`; a rerun with a different plan is an error.
//! Images skipped by an earlier run stay skipped under a later `--strict`.
//!
//! `--input` that is a `.parquet` file is a table of image paths and
//! captions (see [`parquet_items`]); any other file is read as a tar shard; a directory is read as
//! a directory of shards when it directly holds `*.tar` files, otherwise as
//! an image directory. A caption is the first non-empty line of its file
//! (trimmed); an empty file counts as no caption.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use image::DynamicImage;
use ramem_encode::preprocess::{preprocess, PreprocessSpec};
use ramem_store::memory::{
    FloatDtype, Manifest, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, ValueSpec,
    MANIFEST_FILE,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::inputs::list_images;
use crate::memory_cmd::KeyDtype;
use crate::models::{self, ImageModel, TextModel, IMAGE_MODELS, TEXT_MODELS};
use crate::progress;

/// Name of the build's resume state inside the memory directory.
pub const STATE_FILE: &str = "build-state.json";

/// Image extensions recognised inside webdataset shards.
const TAR_IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];
/// Caption extensions recognised inside webdataset shards.
const TAR_CAPTION_EXTENSIONS: &[&str] = &["txt", "caption"];

/// Which values each row stores.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Values {
    /// The image embedding (raw, not normalised).
    Image,
    /// The caption embedding (unit length; empty caption when there is none).
    Text,
    /// Both.
    Both,
}

impl Values {
    fn image(self) -> bool {
        matches!(self, Values::Image | Values::Both)
    }
    fn text(self) -> bool {
        matches!(self, Values::Text | Values::Both)
    }
}

#[derive(Args)]
pub struct BuildArgs {
    /// The memory directory (created if missing; an interrupted build into it resumes).
    #[arg(long)]
    pub memory: PathBuf,
    /// An image directory (sidecar x.txt captions), webdataset .tar shards (repeat the flag), a directory of .tar shards, or a .parquet table of image paths and captions.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    /// Image encoder (keys and image values).
    #[arg(long, default_value = "efficientnet-lite0", help = format!("Image encoder: {IMAGE_MODELS}"))]
    pub model: String,
    /// Values stored per row.
    #[arg(long, value_enum, default_value = "image")]
    pub values: Values,
    /// Text encoder for caption values.
    #[arg(long, default_value = "minilm-l6", help = format!("Text encoder for caption values: {TEXT_MODELS}"))]
    pub text_model: String,
    /// How keys are stored.
    #[arg(long, value_enum, default_value = "f16")]
    pub key_dtype: KeyDtype,
    /// Rows per shard (each shard is committed atomically).
    #[arg(long, default_value_t = 4096)]
    pub shard_rows: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    pub strict: bool,
}

/// Where an item's bytes are.
#[derive(Debug, Clone)]
enum Location {
    File(PathBuf),
    /// Text held in memory (a caption from a parquet table).
    Inline(String),
    /// A byte range of a tar file.
    Tar {
        tar: usize,
        offset: u64,
        len: u64,
    },
}

/// One input sample: an image and maybe a caption.
#[derive(Debug, Clone)]
struct Item {
    /// Stable name used in the fingerprint and in messages.
    id: String,
    /// The metadata `source`.
    source: String,
    image: Location,
    caption: Option<Location>,
}

/// The ordered input items and the tar files they refer to.
struct Inputs {
    items: Vec<Item>,
    tars: Vec<PathBuf>,
}

/// What a build was started with; a resume must match it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Plan {
    items: usize,
    fingerprint: String,
    model: String,
    values: Values,
    text_model: Option<String>,
}

/// One committed (or about to be committed) step: cumulative items and rows.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
struct Step {
    items: usize,
    rows: u64,
}

/// An image that could not be read.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Skip {
    item: usize,
    id: String,
    reason: String,
}

/// `MEM/build-state.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct State {
    plan: Plan,
    steps: Vec<Step>,
    skipped: Vec<Skip>,
}

impl State {
    fn write(&self, memory: &Path) -> Result<()> {
        ramem_store::atomic::write_atomic(
            memory.join(STATE_FILE),
            &serde_json::to_vec_pretty(self)?,
        )?;
        Ok(())
    }

    /// Drops what the memory did not commit; returns the items done.
    fn settle(&mut self, committed_rows: u64, memory: &Path) -> Result<usize> {
        let done = if committed_rows == 0 {
            // Trailing all-skipped steps have rows 0 too; keep the last.
            self.steps.iter().rposition(|s| s.rows == 0)
        } else {
            self.steps.iter().rposition(|s| s.rows == committed_rows)
        };
        let items = match done {
            Some(i) => {
                self.steps.truncate(i + 1);
                self.steps[i].items
            }
            None if committed_rows == 0 => {
                self.steps.clear();
                0
            }
            None => bail!(
                "{}: the memory holds {committed_rows} rows but {STATE_FILE} has no matching \
                 step; it was changed by something other than `memory build`",
                memory.display()
            ),
        };
        self.skipped.retain(|s| s.item < items);
        Ok(items)
    }
}

pub fn run(args: &BuildArgs) -> Result<()> {
    if args.shard_rows == 0 || args.batch == 0 {
        bail!("--shard-rows and --batch must be at least 1");
    }
    let inputs = collect_inputs(&args.input)?;
    let total = inputs.items.len();
    let plan = Plan {
        items: total,
        fingerprint: fingerprint(&inputs.items),
        model: args.model.clone(),
        values: args.values,
        text_model: args.values.text().then(|| args.text_model.clone()),
    };

    let device = models::device();
    let image_model = models::load_image_model(&args.model, &device)?;
    let text_model = match args.values.text() {
        true => Some(models::load_text_model(&args.text_model, &device)?),
        false => None,
    };
    let spec = MemorySpec {
        key_encoder: args.model.clone(),
        key_dim: image_model.dim(),
        key_dtype: match args.key_dtype {
            KeyDtype::F16 => FloatDtype::F16,
            KeyDtype::F32 => FloatDtype::F32,
        },
        normalize_keys: true,
        image: args.values.image().then(|| ValueSpec {
            encoder: args.model.clone(),
            dim: image_model.dim(),
            dtype: FloatDtype::F32,
        }),
        text: text_model.as_ref().map(|m| ValueSpec {
            encoder: args.text_model.clone(),
            dim: m.dim(),
            dtype: FloatDtype::F32,
        }),
    };
    let (mut writer, mut state, done) = open_memory(&args.memory, spec, plan)?;
    if done > 0 {
        tracing::info!(
            "resuming: {done} of {total} items already in {} ({} rows)",
            args.memory.display(),
            writer.count()
        );
    }

    let mut builder = Builder {
        args,
        inputs: &inputs,
        image_model: &image_model,
        text_model: text_model.as_ref(),
        pixel_spec: image_model.spec(),
        shard: ShardRows::default(),
    };
    let bar = progress::bar(total as u64, "images");
    bar.set_position(done as u64);
    let mut next = done;
    while next < total {
        let room = args.shard_rows - builder.shard.rows();
        let end = (next + room.min(args.batch)).min(total);
        let skips = builder.embed_items(next, end)?;
        state.skipped.extend(skips);
        bar.inc((end - next) as u64);
        next = end;
        if builder.shard.rows() == args.shard_rows || next == total {
            let rows = builder.shard.rows() as u64;
            state.steps.push(Step {
                items: next,
                rows: writer.count() + rows,
            });
            // The state goes first; the manifest rename below commits it.
            state.write(&args.memory)?;
            if rows > 0 {
                writer.append_shard(builder.shard.batch())?;
            }
            builder.shard = ShardRows::default();
        }
    }
    bar.finish_and_clear();

    let rows = writer.count();
    tracing::info!(
        "{}: {rows} rows from {total} items ({} skipped)",
        args.memory.display(),
        state.skipped.len()
    );
    if !state.skipped.is_empty() {
        tracing::warn!("skipped {} of {total} images:", state.skipped.len());
        for s in state.skipped.iter().take(20) {
            tracing::warn!("  {}: {}", s.id, s.reason);
        }
        if state.skipped.len() > 20 {
            tracing::warn!("  ... and {} more", state.skipped.len() - 20);
        }
    }
    if rows == 0 {
        bail!("no image could be read (every input was skipped); the memory is empty");
    }
    Ok(())
}

/// Creates the memory, or opens it for a resume after checking the plan.
fn open_memory(dir: &Path, spec: MemorySpec, plan: Plan) -> Result<(MemoryWriter, State, usize)> {
    let fresh = State {
        plan: plan.clone(),
        steps: Vec::new(),
        skipped: Vec::new(),
    };
    if !dir.join(MANIFEST_FILE).exists() {
        let writer = MemoryWriter::create(dir, spec)?;
        fresh.write(dir)?;
        return Ok((writer, fresh, 0));
    }
    let manifest = Manifest::read(dir)?;
    let state_path = dir.join(STATE_FILE);
    let mut state = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice::<State>(&bytes)
            .with_context(|| format!("{}: not a valid build state", state_path.display()))?,
        // Killed between creating the memory and writing the state.
        Err(_) if manifest.count == 0 => fresh,
        Err(_) => bail!(
            "{}: a memory with {} rows that `memory build` did not make (no {STATE_FILE}); \
             build into a new directory",
            dir.display(),
            manifest.count
        ),
    };
    if state.plan != plan {
        bail!(
            "{}: this memory was built from other input or settings \
             (then: {} items, fingerprint {}, model {}, values {:?}, text model {}; \
             now: {} items, fingerprint {}, model {}, values {:?}, text model {}); \
             rerun with the same arguments or build into a new directory",
            dir.display(),
            state.plan.items,
            state.plan.fingerprint,
            state.plan.model,
            state.plan.values,
            state.plan.text_model.as_deref().unwrap_or("-"),
            plan.items,
            plan.fingerprint,
            plan.model,
            plan.values,
            plan.text_model.as_deref().unwrap_or("-"),
        );
    }
    if manifest.key.dtype != spec.key_dtype || manifest.key.dim != spec.key_dim {
        bail!(
            "{}: the memory stores {}-d {} keys; this build would write {}-d {} keys (check --key-dtype)",
            dir.display(),
            manifest.key.dim,
            manifest.key.dtype.name(),
            spec.key_dim,
            spec.key_dtype.name()
        );
    }
    let writer = MemoryWriter::open_append(dir)?;
    remove_state_temps(dir)?;
    let done = state.settle(writer.count(), dir)?;
    Ok((writer, state, done))
}

/// Removes temporary state files a killed build left (`.build-state.json.PID.N.tmp`).
fn remove_state_temps(dir: &Path) -> Result<()> {
    let prefix = format!(".{STATE_FILE}.");
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".tmp") && path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    Ok(())
}

/// Rows waiting for the next shard.
#[derive(Default)]
struct ShardRows {
    keys: Vec<f32>,
    image_values: Vec<f32>,
    text_values: Vec<f32>,
    metadata: Vec<MetadataEntry>,
}

impl ShardRows {
    fn rows(&self) -> usize {
        self.metadata.len()
    }

    fn batch(&self) -> ShardBatch<'_> {
        ShardBatch {
            keys: &self.keys,
            image_values: (!self.image_values.is_empty()).then_some(&self.image_values[..]),
            text_values: (!self.text_values.is_empty()).then_some(&self.text_values[..]),
            metadata: &self.metadata,
        }
    }
}

struct Builder<'a> {
    args: &'a BuildArgs,
    inputs: &'a Inputs,
    image_model: &'a ImageModel,
    text_model: Option<&'a TextModel>,
    pixel_spec: PreprocessSpec,
    shard: ShardRows,
}

impl Builder<'_> {
    /// Embeds items `start..end` into the pending shard; returns the skipped ones.
    fn embed_items(&mut self, start: usize, end: usize) -> Result<Vec<Skip>> {
        let items = &self.inputs.items[start..end];
        let loaded: Vec<Result<(Vec<f32>, Option<String>)>> =
            items.par_iter().map(|item| self.load(item)).collect();
        let mut pixels = Vec::new();
        let mut good: Vec<(&Item, Option<String>)> = Vec::new();
        let mut skips = Vec::new();
        for (i, (item, result)) in items.iter().zip(loaded).enumerate() {
            match result {
                Ok((p, caption)) => {
                    pixels.extend_from_slice(&p);
                    good.push((item, caption));
                }
                Err(e) if self.args.strict => {
                    return Err(e.context(format!("{} (--strict)", item.id)))
                }
                Err(e) => skips.push(Skip {
                    item: start + i,
                    id: item.id.clone(),
                    reason: format!("{e:#}"),
                }),
            }
        }
        if good.is_empty() {
            return Ok(skips);
        }
        let side = self.pixel_spec.crop as usize;
        let tensor = Tensor::from_vec(pixels, (good.len(), 3, side, side), &models::device())?;
        let embedding = self
            .image_model
            .forward(&tensor)?
            .embedding
            .flatten_all()?
            .to_vec1::<f32>()?;
        if self.args.values.image() {
            self.shard.image_values.extend_from_slice(&embedding);
        }
        self.shard.keys.extend(embedding);
        if let Some(text) = self.text_model {
            let captions: Vec<&str> = good
                .iter()
                .map(|(_, c)| c.as_deref().unwrap_or(""))
                .collect();
            let emb = text.embed(&captions)?;
            self.shard
                .text_values
                .extend(emb.flatten_all()?.to_vec1::<f32>()?);
        }
        for (item, caption) in good {
            self.shard.metadata.push(MetadataEntry {
                source: Some(item.source.clone()),
                caption,
            });
        }
        Ok(skips)
    }

    /// Decodes and preprocesses an item's image and reads its caption.
    fn load(&self, item: &Item) -> Result<(Vec<f32>, Option<String>)> {
        let bytes = self.read(&item.image)?;
        let image = decode_image(&bytes)?;
        let pixels = preprocess(&image, &self.pixel_spec)?;
        let caption = match &item.caption {
            Some(loc) => {
                let bytes = self.read(loc)?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    anyhow::anyhow!("the caption is not UTF-8 text ({})", self.describe(loc))
                })?;
                // The first non-empty line: caption files such as Tux Paint's
                // stamps put translations on the lines that follow.
                text.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .map(str::to_string)
            }
            None => None,
        };
        Ok((pixels, caption))
    }

    fn read(&self, loc: &Location) -> Result<Vec<u8>> {
        match loc {
            Location::Inline(text) => Ok(text.as_bytes().to_vec()),
            Location::File(path) => {
                std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
            }
            Location::Tar { tar, offset, len } => {
                let path = &self.inputs.tars[*tar];
                let mut file =
                    File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
                file.seek(SeekFrom::Start(*offset))
                    .with_context(|| format!("{}: cannot seek", path.display()))?;
                let mut bytes = Vec::new();
                file.take(*len)
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                if bytes.len() as u64 != *len {
                    bail!("{}: truncated at byte {offset}", path.display());
                }
                Ok(bytes)
            }
        }
    }

    fn describe(&self, loc: &Location) -> String {
        match loc {
            Location::File(p) => p.display().to_string(),
            Location::Inline(_) => "a caption from the input table".to_string(),
            Location::Tar { tar, offset, .. } => {
                format!("{} at byte {offset}", self.inputs.tars[*tar].display())
            }
        }
    }
}

/// Decodes an image held in memory (format from its content).
fn decode_image(bytes: &[u8]) -> Result<DynamicImage> {
    if bytes.is_empty() {
        bail!("empty image (0 bytes)");
    }
    image::load_from_memory(bytes).context("not a readable image (corrupt or unsupported format)")
}

/// FNV-1a (64-bit) of the item ids, each ended by a zero byte.
fn fingerprint(items: &[Item]) -> String {
    let hash = items
        .iter()
        .flat_map(|item| item.id.bytes().chain([0u8]))
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// Resolves `--input`: one image directory, or tar shards (files or a directory of them).
fn collect_inputs(inputs: &[PathBuf]) -> Result<Inputs> {
    let mut tars = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .with_context(|| format!("{}: cannot read input", input.display()))?;
        if !meta.is_dir()
            && input
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        {
            if inputs.len() > 1 {
                bail!(
                    "{}: a parquet table must be the only --input",
                    input.display()
                );
            }
            return parquet_items(input);
        }
        if meta.is_dir() {
            let shards = tar_files_in(input)?;
            if shards.is_empty() {
                if inputs.len() > 1 {
                    bail!(
                        "{}: holds no .tar shards (an image directory must be the only --input)",
                        input.display()
                    );
                }
                return image_dir_items(input);
            }
            tars.extend(shards);
        } else {
            tars.push(input.clone());
        }
    }
    let mut items = Vec::new();
    for (index, tar) in tars.iter().enumerate() {
        let found = tar_items(tar, index)?;
        if found.is_empty() {
            tracing::warn!("{}: no samples with an image", tar.display());
        }
        items.extend(found);
    }
    if items.is_empty() {
        bail!(
            "no samples with an image ({}) in the input shards",
            TAR_IMAGE_EXTENSIONS.join(", ")
        );
    }
    Ok(Inputs { items, tars })
}

/// The `*.tar` files directly inside `dir`, sorted by name.
fn tar_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("{}: cannot list directory", dir.display()))?
            .path();
        if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("tar"))
        {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Every image under `dir` in sorted order, with its sidecar caption if present.
fn image_dir_items(dir: &Path) -> Result<Inputs> {
    let (images, _) = list_images(dir, None)?;
    let items = images
        .into_iter()
        .map(|image| {
            let sidecar = image.path.with_extension("txt");
            Item {
                id: image.id,
                source: image.path.display().to_string(),
                caption: sidecar.is_file().then_some(Location::File(sidecar)),
                image: Location::File(image.path),
            }
        })
        .collect();
    Ok(Inputs {
        items,
        tars: Vec::new(),
    })
}

/// The rows of a parquet table of image paths and captions: the path from the
/// first non-null of the columns `url`, `image_path`, `source`, `path`
/// (relative paths resolve against the table's directory), the caption from
/// `caption`.
fn parquet_items(table: &Path) -> Result<Inputs> {
    let rows = ramem_store::memory::read_parquet_metadata(table)?;
    let base = table.parent().unwrap_or(Path::new(""));
    let mut items = Vec::with_capacity(rows.len());
    for (row, entry) in rows.into_iter().enumerate() {
        let Some(source) = entry.source else {
            bail!(
                "{}: row {row} has no image path (columns url, image_path, source or path)",
                table.display()
            );
        };
        if source.contains("://") {
            bail!(
                "{}: row {row} names a URL ({source}); ramem reads local files only: download the images first",
                table.display()
            );
        }
        let path = base.join(&source);
        items.push(Item {
            id: format!("{row}:{source}"),
            source: path.display().to_string(),
            image: Location::File(path),
            caption: entry.caption.map(Location::Inline),
        });
    }
    if items.is_empty() {
        bail!("{}: the table has no rows", table.display());
    }
    Ok(Inputs {
        items,
        tars: Vec::new(),
    })
}

/// Splits `dir/000123.jpg` into (`dir/000123`, `jpg`): the key ends at the
/// first dot of the file name.
fn split_key(name: &str) -> Option<(&str, &str)> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = base_start + name[base_start..].find('.')?;
    Some((&name[..dot], &name[dot + 1..]))
}

/// The samples of one webdataset shard, in the order their keys first appear.
fn tar_items(path: &Path, index: usize) -> Result<Vec<Item>> {
    let not_tar = || format!("{}: not a readable tar archive", path.display());
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let mut order: Vec<String> = Vec::new();
    let mut samples: HashMap<String, (Option<Location>, Option<Location>)> = HashMap::new();
    let mut entries = 0usize;
    for entry in archive.entries_with_seek().with_context(not_tar)? {
        let entry = entry.with_context(not_tar)?;
        entries += 1;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((key, ext)) = split_key(&name) else {
            continue;
        };
        let ext = ext.to_ascii_lowercase();
        let is_image = TAR_IMAGE_EXTENSIONS.contains(&ext.as_str());
        let is_caption = TAR_CAPTION_EXTENSIONS.contains(&ext.as_str());
        if !is_image && !is_caption {
            continue;
        }
        let loc = Location::Tar {
            tar: index,
            offset: entry.raw_file_position(),
            len: entry.size(),
        };
        let sample = samples.entry(key.to_string()).or_insert_with(|| {
            order.push(key.to_string());
            (None, None)
        });
        let slot = if is_image {
            &mut sample.0
        } else {
            &mut sample.1
        };
        if slot.is_none() {
            *slot = Some(loc);
        } else {
            tracing::warn!(
                "{}: sample {key} has more than one {ext} file; using the first",
                path.display()
            );
        }
    }
    if entries == 0 && std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > 0 {
        bail!("{}", not_tar());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut items = Vec::new();
    let mut captions_only = 0usize;
    for key in order {
        let Some((image, caption)) = samples.remove(&key) else {
            continue;
        };
        let Some(image) = image else {
            captions_only += 1;
            continue;
        };
        items.push(Item {
            id: format!("{name}:{key}"),
            source: format!("{}:{key}", path.display()),
            image,
            caption,
        });
    }
    if captions_only > 0 {
        tracing::warn!(
            "{}: {captions_only} samples without an image ignored",
            path.display()
        );
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_end_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("000123.jpg"), Some(("000123", "jpg")));
        assert_eq!(
            split_key("a.b/000123.seg.png"),
            Some(("a.b/000123", "seg.png"))
        );
        assert_eq!(split_key("noext"), None);
    }

    #[test]
    fn settle_keeps_only_committed_steps() {
        let plan = Plan {
            items: 10,
            fingerprint: "x".into(),
            model: "m".into(),
            values: Values::Image,
            text_model: None,
        };
        let skip = |item| Skip {
            item,
            id: format!("{item}"),
            reason: "bad".into(),
        };
        let mut state = State {
            plan,
            steps: vec![Step { items: 3, rows: 2 }, Step { items: 6, rows: 5 }],
            skipped: vec![skip(1), skip(4)],
        };
        // Killed after writing the second step, before its shard committed.
        let mut s = state.clone();
        assert_eq!(s.settle(2, Path::new("m")).unwrap(), 3);
        assert_eq!(s.steps.len(), 1);
        assert_eq!(s.skipped, vec![skip(1)]);
        assert_eq!(state.settle(5, Path::new("m")).unwrap(), 6);
        assert_eq!(state.clone().settle(0, Path::new("m")).unwrap(), 0);
        assert!(state.settle(4, Path::new("m")).is_err());
    }
}
