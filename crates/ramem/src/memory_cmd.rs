//! `ramem memory build|import|info|dedup`: the on-disk memory of image-text
//! embeddings (the work is in `ramem-ingest`, `ramem-store` and
//! `ramem-index`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use ramem_data::{Selection, SplitChoice};
use ramem_encode::{IMAGE_MODELS, TEXT_MODELS};
use ramem_ingest::{
    add_to_memory, build_memory, merge_shards, AddOptions, BuildOptions, ShardOf, StoredValues,
};
use ramem_store::memory::{
    import_clip_retrieval, import_npy_with_progress, FloatDtype, ImportOptions, ImportProgress,
    ImportSources, Memory, MemoryWriter,
};

#[derive(Subcommand)]
pub enum MemoryCommand {
    /// Build a memory from images (sidecar .txt captions), webdataset .tar shards, a parquet table or a labelled data set spec (resumable).
    Build(BuildArgs),
    /// Add images to a memory, encoded as it was built; its HNSW index is brought up to date (resumable).
    Add(AddArgs),
    /// Change the labels of memory entries (takes effect without retraining).
    Relabel(RelabelArgs),
    /// Delete memory entries (tombstones: searches skip them at once; `compact` drops them).
    Delete(DeleteArgs),
    /// Rewrite a memory into a new directory without its deleted entries, relabels folded in (resumable).
    Compact(CompactArgs),
    /// Import precomputed embeddings (.npy) into a memory directory (resumable).
    Import(ImportArgs),
    /// Join the parts of a sharded build (`build --shard I/N`) into one memory: the rows one
    /// build would have written, in the same order (resumable).
    Merge(MergeArgs),
    /// Show what a memory holds.
    Info(InfoArgs),
    /// Copy a memory directory into a Milvus collection, in batches (resumable: a rerun
    /// writes what is missing, never a duplicate; entries deleted here are deleted there).
    Push(PushArgs),
    /// Copy a memory on a Milvus collection into a new memory directory (resumable).
    Pull(PullArgs),
    /// Copy a memory without the entries near-duplicate to a test set (cosine >= --threshold).
    Dedup(DedupArgs),
}

pub fn run(command: MemoryCommand) -> Result<()> {
    match command {
        MemoryCommand::Build(args) => build(&args),
        MemoryCommand::Add(args) => add(&args),
        MemoryCommand::Relabel(args) => relabel(&args),
        MemoryCommand::Delete(args) => delete(&args),
        MemoryCommand::Compact(args) => compact(&args),
        MemoryCommand::Import(args) => import(&args),
        MemoryCommand::Merge(args) => merge(&args),
        MemoryCommand::Info(args) => info(&args),
        MemoryCommand::Push(args) => push(&args),
        MemoryCommand::Pull(args) => pull(&args),
        MemoryCommand::Dedup(args) => dedup(&args),
    }
}

/// How keys are stored.
#[derive(Clone, Copy, ValueEnum)]
pub enum KeyDtype {
    F16,
    F32,
}

impl KeyDtype {
    fn dtype(self) -> FloatDtype {
        match self {
            KeyDtype::F16 => FloatDtype::F16,
            KeyDtype::F32 => FloatDtype::F32,
        }
    }
}

#[derive(Args)]
pub struct BuildArgs {
    /// The memory directory (created if missing; an interrupted build into it resumes).
    #[arg(long)]
    pub memory: PathBuf,
    /// An image directory (sidecar x.txt captions), webdataset .tar shards (repeat the flag), a
    /// directory of .tar shards, a .parquet table of image paths and captions (and labels), or a
    /// labelled data set spec (idx:DIR, folders:DIR, list:..., openclipart:DIR, wds:...), whose
    /// entries are labelled with their class names.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Image encoder (keys and image values).
    #[arg(long, default_value = "efficientnet-lite0", help = format!("Image encoder: {IMAGE_MODELS}"))]
    pub model: String,
    /// Values stored per row: image (the image embedding, raw), text (the caption embedding,
    /// unit length; the empty caption's where there is none) or both.
    #[arg(long, default_value = "image")]
    pub values: StoredValues,
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
    /// Build only part I of N (0 <= I < N; whole batches of the input, in order), for one memory
    /// built by N processes or machines; `memory merge` joins the parts.
    #[arg(long)]
    pub shard: Option<ShardOf>,
}

fn build(args: &BuildArgs) -> Result<()> {
    build_memory(&BuildOptions {
        memory: args.memory.clone(),
        inputs: args.input.clone(),
        model: args.model.clone(),
        values: args.values,
        text_model: args.text_model.clone(),
        key_dtype: args.key_dtype.dtype(),
        shard_rows: args.shard_rows,
        batch: args.batch,
        strict: args.strict,
        selection: args.selection.selection(),
        shard: args.shard,
    })?;
    Ok(())
}

/// Which images of a data set spec input go in.
#[derive(Args)]
pub struct SelectionArgs {
    /// The split of a data set spec input: train, test or all.
    #[arg(long, default_value = "train")]
    pub split: SplitChoice,
    /// Only these classes of a data set spec input (names, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only_classes: Vec<String>,
    /// Leave these classes of a data set spec input out (names, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip_classes: Vec<String>,
}

impl SelectionArgs {
    fn selection(&self) -> Selection {
        Selection {
            split: self.split,
            only_classes: self.only_classes.clone(),
            skip_classes: self.skip_classes.clone(),
        }
    }
}

#[derive(Args)]
pub struct AddArgs {
    /// The memory to add to (its encoders and value kinds are used).
    #[arg(long)]
    pub memory: PathBuf,
    /// What to add: any input `memory build` takes.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// The class name of every added entry (instead of the input's labels).
    #[arg(long)]
    pub label: Option<String>,
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

fn add(args: &AddArgs) -> Result<()> {
    add_to_memory(&AddOptions {
        memory: args.memory.clone(),
        inputs: args.input.clone(),
        selection: args.selection.selection(),
        label: args.label.clone(),
        shard_rows: args.shard_rows,
        batch: args.batch,
        strict: args.strict,
    })?;
    Ok(())
}

#[derive(Args)]
pub struct RelabelArgs {
    /// The memory.
    #[arg(long)]
    pub memory: PathBuf,
    /// The entries: a text file of ids (one per line) or an integer .npy.
    #[arg(long)]
    pub ids: PathBuf,
    /// Their new labels, one per id: a text file of class names (one per line; `-` or an empty
    /// line for no label; a new name joins the memory's classes), or an integer .npy of class
    /// indices into the memory's classes (-1 for none).
    #[arg(long)]
    pub labels: PathBuf,
}

fn relabel(args: &RelabelArgs) -> Result<()> {
    let memory = Memory::open(&args.memory)?;
    let ids = ramem_store::memory::read_id_list(&args.ids)?;
    let labels = ramem_store::memory::read_label_list(&args.labels, memory.label_names())?;
    if labels.len() != ids.len() {
        bail!(
            "{}: {} labels for the {} ids of {}",
            args.labels.display(),
            labels.len(),
            ids.len(),
            args.ids.display()
        );
    }
    drop(memory);
    let changes: Vec<(i64, Option<String>)> = ids.into_iter().zip(labels).collect();
    let mut writer = MemoryWriter::open_append(&args.memory)?;
    let report = writer
        .edit(&changes, &[])
        .map_err(|e| anyhow::anyhow!("{e} (ids from {})", args.ids.display()))?;
    tracing::info!(
        "{}: relabelled {} entries ({} relabelled, {} deleted since the last compaction)",
        args.memory.display(),
        report.relabeled,
        report.total_relabeled,
        report.total_deleted
    );
    Ok(())
}

#[derive(Args)]
pub struct DeleteArgs {
    /// The memory.
    #[arg(long)]
    pub memory: PathBuf,
    /// The entries: a text file of ids (one per line) or an integer .npy.
    #[arg(long)]
    pub ids: PathBuf,
}

fn delete(args: &DeleteArgs) -> Result<()> {
    let ids = ramem_store::memory::read_id_list(&args.ids)?;
    let mut writer = MemoryWriter::open_append(&args.memory)?;
    let report = writer
        .edit(&[], &ids)
        .map_err(|e| anyhow::anyhow!("{e} (ids from {})", args.ids.display()))?;
    tracing::info!(
        "{}: deleted {} entries ({} given; {} deleted since the last compaction: \
         `ramem memory compact` drops them)",
        args.memory.display(),
        report.deleted,
        ids.len(),
        report.total_deleted
    );
    Ok(())
}

#[derive(Args)]
pub struct CompactArgs {
    /// The memory to compact (left unchanged).
    #[arg(long)]
    pub memory: PathBuf,
    /// The new memory (a missing or empty directory; an interrupted compaction into it
    /// resumes). compacted-from.npy in it gives each entry's id in the old memory.
    #[arg(long)]
    pub out: PathBuf,
}

fn compact(args: &CompactArgs) -> Result<()> {
    let bar = ramem_progress::bar(0, "shards");
    bar.set_message(format!("compacting {}", args.memory.display()));
    let report = ramem_store::memory::compact(&args.memory, &args.out, &mut |done, total| {
        bar.set_progress(done, total)
    })?;
    bar.finish();
    tracing::info!(
        "{}: {} entries ({} deleted ones dropped); old ids in {}. Build its HNSW index with \
         `ramem index build` if it needs one",
        args.out.display(),
        report.rows,
        report.dropped,
        report.map.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct ImportArgs {
    /// The memory directory (created if missing; an interrupted import into it resumes).
    #[arg(long)]
    pub memory: PathBuf,
    /// N x D float .npy (<f4 or <f2): the keys, image embeddings from the query encoder.
    #[arg(long, required_unless_present = "clip_retrieval")]
    pub keys: Option<PathBuf>,
    /// N x D float .npy: image embeddings stored as values.
    #[arg(long)]
    pub image_values: Option<PathBuf>,
    /// N x D float .npy: text (caption) embeddings stored as values.
    #[arg(long)]
    pub text_values: Option<PathBuf>,
    /// N rows of metadata: .jsonl objects with "source", "caption" and "label", a .parquet
    /// (url/image_path/source/path, caption and label columns), or one source path/URL per line.
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// N integer class labels (.npy, int64 or int32; -1 for none).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// The class names --labels index, one per line (default: 0, 1, ...).
    #[arg(long, requires = "labels")]
    pub label_names: Option<PathBuf>,
    /// Encoder that produced the keys (recorded in the manifest, checked by later commands).
    #[arg(long, default_value = "efficientnet-lite0")]
    pub key_encoder: String,
    /// Encoder of the image values.
    #[arg(long, default_value = "efficientnet-lite0")]
    pub image_encoder: String,
    /// Encoder of the text values.
    #[arg(long, default_value = "minilm-l6")]
    pub text_encoder: String,
    /// How keys are stored: f16 halves the bytes a search reads.
    #[arg(long, value_enum, default_value = "f16")]
    pub key_dtype: KeyDtype,
    /// Store keys as given instead of scaling them to unit length.
    #[arg(long)]
    pub no_normalize: bool,
    /// A clip-retrieval embedding output folder instead of --keys and friends: img_emb/img_emb_N.npy
    /// (keys and image values), text_emb/text_emb_N.npy (text values) and
    /// metadata/metadata_N.parquet (url or image_path as source, caption), imported in order of N.
    /// Name the CLIP encoders with --key-encoder, --image-encoder and --text-encoder.
    #[arg(long, conflicts_with_all = ["keys", "image_values", "text_values", "metadata"])]
    pub clip_retrieval: Option<PathBuf>,
    /// Rows per shard (each shard is committed atomically).
    #[arg(long, default_value_t = 65536)]
    pub shard_rows: usize,
    /// Add these files' rows after the rows the memory already holds (from other files).
    /// Without it, an import into a memory with other files' rows is refused; a rerun with
    /// the same files resumes an interrupted import.
    #[arg(long)]
    pub append: bool,
}

fn import(args: &ImportArgs) -> Result<()> {
    if args.shard_rows == 0 {
        bail!("--shard-rows must be at least 1");
    }
    let label_names = args
        .label_names
        .as_deref()
        .map(ramem_data::read_class_names)
        .transpose()?;
    let sources = args.keys.as_deref().map(|keys| ImportSources {
        keys,
        image_values: args.image_values.as_deref(),
        text_values: args.text_values.as_deref(),
        metadata: args.metadata.as_deref(),
        labels: args.labels.as_deref(),
        label_names: label_names.as_deref(),
    });
    let options = ImportOptions {
        key_encoder: args.key_encoder.clone(),
        key_dtype: args.key_dtype.dtype(),
        normalize_keys: !args.no_normalize,
        image_encoder: args.image_encoder.clone(),
        text_encoder: args.text_encoder.clone(),
        append: args.append,
        ..ImportOptions::default()
    };
    let mut bar = ramem_progress::ResumedBar::new("rows", args.memory.display().to_string());
    let mut on_progress = |p: ImportProgress| bar.update(p.skipped, p.total, p.committed);
    let report = match (&args.clip_retrieval, &sources) {
        (Some(layout), _) => import_clip_retrieval(
            &args.memory,
            layout,
            &options,
            args.shard_rows,
            &mut on_progress,
        )?,
        (None, Some(sources)) => import_npy_with_progress(
            &args.memory,
            sources,
            &options,
            args.shard_rows,
            &mut on_progress,
        )?,
        (None, None) => bail!("give --keys (or --clip-retrieval)"),
    };
    bar.finish();
    tracing::info!(
        "{}: {} rows ({} imported now in {} shards, {} already there) in {:.1} s; they are memory rows {}..{}",
        args.memory.display(),
        report.rows,
        report.imported,
        report.shards_written,
        report.skipped,
        report.elapsed.as_secs_f64(),
        report.first_row,
        report.first_row + report.rows
    );
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// The merged memory (a new directory; an interrupted merge into it resumes).
    #[arg(long)]
    pub out: PathBuf,
    /// The memories the parts were built into, in any order: all N parts of one input.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
}

fn merge(args: &MergeArgs) -> Result<()> {
    let report = merge_shards(&args.out, &args.parts)?;
    tracing::info!(
        "{}: {} rows from {} parts ({} images skipped)",
        args.out.display(),
        report.rows,
        report.shards,
        report.skipped.len()
    );
    Ok(())
}

#[derive(Args)]
pub struct PushArgs {
    /// The memory directory to copy.
    #[arg(long)]
    pub memory: PathBuf,
    /// The collection: milvus://HOST:PORT/COLLECTION (created where missing; one holding a
    /// memory with other encoders or dimensions is refused).
    #[arg(long)]
    pub to: String,
    /// The index of the keys in a new collection: flat (exact; the default), hnsw, ivf_flat,
    /// ivf_pq or diskann, where the server has it. An existing collection keeps its index
    /// (naming another is refused).
    #[arg(long)]
    pub index: Option<String>,
    /// The index's parameters, NAME=VALUE comma-separated in Milvus's names (hnsw: M,
    /// efConstruction; ivf_flat: nlist; ivf_pq: nlist, m, nbits).
    #[arg(long, default_value = "")]
    pub index_params: String,
    /// Entries per request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

#[derive(Args)]
pub struct PullArgs {
    /// The collection: milvus://HOST:PORT/COLLECTION.
    #[arg(long)]
    pub from: String,
    /// The new memory directory (an interrupted pull into it resumes); it also receives
    /// pulled-from.npy, the collection id of each entry.
    #[arg(long)]
    pub memory: PathBuf,
    /// Entries per committed shard.
    #[arg(long, default_value_t = 100_000)]
    pub shard_rows: usize,
}

#[cfg(feature = "milvus")]
fn push(args: &PushArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let options = ramem_milvus::PushOptions {
        index: match (&args.index, args.index_params.is_empty()) {
            (None, true) => None,
            (index, _) => {
                let name = index.as_deref().unwrap_or("flat");
                Some(
                    ramem_milvus::IndexKind::parse(name, &args.index_params)
                        .map_err(|e| anyhow::anyhow!("--index {name}: {e}"))?,
                )
            }
        },
        batch: args.batch,
    };
    let bar = ramem_progress::bar(0, "entries");
    let report = ramem_milvus::push(&args.memory, &args.to, &options, &mut |done, total| {
        bar.set_progress(done, total)
    })?;
    bar.finish();
    tracing::info!(
        "{}: {} entries written, {} already there, {} deleted; the collection holds {} rows \
         ({:.1} s)",
        args.to,
        report.written,
        report.already,
        report.deleted,
        report.rows,
        report.seconds
    );
    Ok(())
}

#[cfg(feature = "milvus")]
fn pull(args: &PullArgs) -> Result<()> {
    let bar = ramem_progress::bar(0, "ids");
    let report = ramem_milvus::pull(
        &args.from,
        &args.memory,
        args.shard_rows,
        &mut |done, total| bar.set_progress(done, total),
    )?;
    bar.finish();
    tracing::info!(
        "{}: {} entries ({} ids without a row left out); their collection ids in {}",
        args.memory.display(),
        report.rows,
        report.missing,
        report.map.display()
    );
    Ok(())
}

#[cfg(not(feature = "milvus"))]
fn push(args: &PushArgs) -> Result<()> {
    bail!("{}: this ramem was built without Milvus support (build it with `cargo build --release -p ramem --features milvus`)", args.to)
}

#[cfg(not(feature = "milvus"))]
fn pull(args: &PullArgs) -> Result<()> {
    bail!("{}: this ramem was built without Milvus support (build it with `cargo build --release -p ramem --features milvus`)", args.from)
}

#[derive(Args)]
pub struct InfoArgs {
    /// The memory: a directory, or a collection (milvus://HOST:PORT/COLLECTION).
    #[arg(long)]
    pub memory: PathBuf,
}

fn info(args: &InfoArgs) -> Result<()> {
    if ramem_recognize::is_collection(&args.memory) {
        #[cfg(feature = "milvus")]
        print!(
            "{}",
            ramem_milvus::MilvusMemory::open_unfinished(&args.memory.to_string_lossy())?.summary()
        );
        #[cfg(not(feature = "milvus"))]
        ramem_recognize::open_memory(&args.memory)?;
        return Ok(());
    }
    print!("{}", Memory::open(&args.memory)?.summary());
    Ok(())
}

#[derive(Args)]
pub struct DedupArgs {
    /// The memory to deduplicate (left unchanged).
    #[arg(long)]
    pub memory: PathBuf,
    /// T x D float .npy of test embeddings (from the memory's key encoder); rows are L2-normalised.
    #[arg(long)]
    pub test: PathBuf,
    /// Drop every entry whose key has cosine similarity >= this with any test row; in (-1, 1].
    #[arg(long, default_value_t = 0.95, allow_hyphen_values = true)]
    pub threshold: f64,
    /// The new memory (a missing or empty directory); it also receives dedup.json, the dropped ids.
    #[arg(long)]
    pub out: PathBuf,
}

fn dedup(args: &DedupArgs) -> Result<()> {
    let report = ramem_index::dedup_memory(&args.memory, &args.test, args.threshold, &args.out)?;
    let copy = report.copy;
    println!(
        "dropped {} of {} entries (cosine >= {} with one of {} test rows); {} entries in {} (dropped ids in {})",
        copy.dropped,
        copy.source_rows,
        args.threshold,
        report.test_rows,
        copy.kept,
        args.out.display(),
        args.out.join(ramem_index::dedup::DEDUP_RECORD).display()
    );
    Ok(())
}
