//! The study file (`ramem study --config FILE.toml`): which data set, which
//! protocol, which memories, methods, value kinds, k and seeds. Every table
//! refuses unknown fields, so a typo is an error naming the field instead of
//! a silently ignored setting. The `[mam]` table reads straight into the
//! model crate's [`MamConfig`] and `[train]` into its [`TrainConfig`] (plus
//! the two options only a study has), so a new module or training option is
//! one edit there.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ramem_index::Engine;
use ramem_model::{MamConfig, TrainConfig, ValueChoice};
use serde::{Deserialize, Deserializer};

use crate::auto::{AutoSetting, AutoTable, RateKind, SearchSpace, NEIGHBOURS};

/// The methods a study can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// A linear classifier on the query embedding (no retrieval).
    LinearProbe,
    /// The k nearest labelled training images vote.
    KnnVote,
    /// The mean of the retrieved values beside the query, classified
    /// linearly (RAC-like uniform aggregation).
    UniformMean,
    /// The linear probe plus a training-free cache of the training features.
    TipAdapter,
    /// Tip-Adapter with the cache keys trained.
    TipAdapterF,
    /// The memory attention module.
    Mam,
}

impl Method {
    /// Every method, in the order a study runs them.
    pub const ALL: [Method; 6] = [
        Method::LinearProbe,
        Method::KnnVote,
        Method::UniformMean,
        Method::TipAdapter,
        Method::TipAdapterF,
        Method::Mam,
    ];

    /// The method's name in study files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::LinearProbe => "linear_probe",
            Method::KnnVote => "knn_vote",
            Method::UniformMean => "uniform_mean",
            Method::TipAdapter => "tip_adapter",
            Method::TipAdapterF => "tip_adapter_f",
            Method::Mam => "mam",
        }
    }

    /// Whether the method trains a model (Tip-Adapter through the linear
    /// probe it builds on), so that `[train] ensemble` applies to it.
    pub fn trained(self) -> bool {
        self != Method::KnnVote
    }

    /// Which learning rate (and options) the method trains with.
    pub fn rate_kind(self) -> RateKind {
        match self {
            Method::Mam => RateKind::Module,
            Method::TipAdapter | Method::TipAdapterF => RateKind::Base,
            Method::LinearProbe | Method::UniformMean | Method::KnnVote => RateKind::Heads,
        }
    }

    /// Whether the method reads retrieved memory entries.
    pub fn retrieves(self) -> bool {
        matches!(self, Method::UniformMean | Method::Mam)
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Method, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == text)
            .ok_or_else(|| {
                format!(
                    "unknown method {text:?}; known: {}",
                    Method::ALL.map(|m| m.name()).join(", ")
                )
            })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `k`, the neighbours per query: a grid of values, each one run (`k = 16`,
/// `k = [8, 32]`), or `"auto"` (the default), where each retrieving method
/// chooses among [`NEIGHBOURS`] on the validation split ([`crate::auto`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum KChoice {
    #[default]
    Auto,
    Grid(Vec<usize>),
}

impl KChoice {
    /// The values neighbour lists serve: the grid, or the `auto` choices.
    pub fn values(&self) -> &[usize] {
        match self {
            KChoice::Auto => &NEIGHBOURS,
            KChoice::Grid(values) => values,
        }
    }

    pub fn is_auto(&self) -> bool {
        *self == KChoice::Auto
    }

    /// One entry per run: each value of a grid, or one `None` where k is
    /// chosen by each run's search.
    pub fn runs(&self) -> Vec<Option<usize>> {
        match self {
            KChoice::Auto => vec![None],
            KChoice::Grid(values) => values.iter().map(|&k| Some(k)).collect(),
        }
    }

    /// A command line's `--k`: a number or `auto`.
    pub fn parse(text: &str) -> std::result::Result<KChoice, String> {
        match text {
            "auto" => Ok(KChoice::Auto),
            _ => match text.parse::<usize>() {
                Ok(k) if k > 0 => Ok(KChoice::Grid(vec![k])),
                _ => Err(format!(
                    "{text:?} is neither a k of at least 1 nor \"auto\""
                )),
            },
        }
    }
}

impl<'de> Deserialize<'de> for KChoice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let bad = || D::Error::custom("k must be \"auto\", a number or a list of numbers");
        match toml::Value::deserialize(deserializer)? {
            toml::Value::String(s) if s == "auto" => Ok(KChoice::Auto),
            toml::Value::Integer(k) => {
                Ok(KChoice::Grid(vec![usize::try_from(k).map_err(|_| bad())?]))
            }
            toml::Value::Array(values) => values
                .into_iter()
                .map(|v| v.as_integer().and_then(|k| usize::try_from(k).ok()))
                .collect::<Option<Vec<usize>>>()
                .map(KChoice::Grid)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// The benchmark's name in reports.
    pub name: String,
    /// A data set spec (`idx:DIR`, `list:TRAIN,TEST@ROOT`, `folders:DIR`,
    /// `openclipart:DIR`, `wds:SHARDS`; see ramem-data).
    pub dataset: String,
    /// The frozen image encoder (query and key encoder).
    #[serde(default = "default_encoder")]
    pub encoder: String,
    /// Text encoder for caption values.
    #[serde(default = "default_text_encoder")]
    pub text_encoder: String,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// How many seeds run side by side (each trains its methods in turn;
    /// the results do not depend on it). Several keep the cores busy
    /// through the single-threaded parts of training; each costs the
    /// memory of one seed's neighbour bank and batches.
    #[serde(default = "default_parallel_seeds")]
    pub parallel_seeds: usize,
    #[serde(default = "default_methods")]
    pub methods: Vec<Method>,
    /// Neighbours per query: every value of a grid is one run; `"auto"`
    /// (the default) is chosen on validation.
    #[serde(default)]
    pub k: KChoice,
    /// Value kinds attended over: image, text, both (and the label kinds).
    #[serde(default = "default_values")]
    pub values: Vec<ValueChoice>,
    /// Make the training split long-tailed.
    pub long_tail: Option<LongTail>,
    /// Corrupt the training labels.
    pub noise: Option<Noise>,
    #[serde(default)]
    pub validation: Validation,
    #[serde(default)]
    pub memory: MemoryConfig,
    /// How neighbours are found.
    #[serde(default)]
    pub retrieval: RetrievalConfig,
    #[serde(default)]
    pub train: TrainTable,
    /// The budget of the search for `auto` settings.
    #[serde(default)]
    pub auto: AutoTable,
    /// The memory attention module's options; its dimensions come from the
    /// data and are not set here.
    #[serde(default)]
    pub mam: MamTable,
    /// Post-hoc logit adjustment for every method: test log-probabilities
    /// get `-tau * ln(prior)` with tau chosen on the validation split.
    #[serde(default = "default_true")]
    pub posthoc_adjustment: bool,
    /// Where embeddings are cached (default: `$RAMEM_HOME/embeddings`).
    pub cache_dir: Option<PathBuf>,
    /// Test images per run to write with their neighbours and attention
    /// weights (`evidence/*.jsonl`).
    #[serde(default = "default_evidence")]
    pub evidence: usize,
}

fn default_encoder() -> String {
    "efficientnet-lite0".into()
}
fn default_text_encoder() -> String {
    "minilm-l6".into()
}
fn default_parallel_seeds() -> usize {
    3
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_methods() -> Vec<Method> {
    Method::ALL.to_vec()
}
fn default_values() -> Vec<ValueChoice> {
    vec![ValueChoice::Image]
}
fn default_true() -> bool {
    true
}
fn default_evidence() -> usize {
    20
}

/// Sets `KEY=VALUE` (see [`StudyConfig::read_with`]) in `table`.
fn apply_setting(table: &mut toml::Table, set: &str) -> Result<()> {
    let Some((key, value)) = set.split_once('=') else {
        bail!("expected KEY=VALUE");
    };
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut parsed) => parsed.remove("v").context("no value")?,
        Err(_) => toml::Value::String(value.to_string()),
    };
    let mut path: Vec<&str> = key.trim().split('.').collect();
    let last = path.pop().filter(|k| !k.is_empty()).context("empty KEY")?;
    let mut at = table;
    for part in path {
        let entry = at
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry
            .as_table_mut()
            .with_context(|| format!("`{part}` is not a table"))?;
    }
    at.insert(last.to_string(), value);
    Ok(())
}

/// CIFAR-LT style subsampling: n_c = floor(n_max * IF^(-c/(C-1))).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongTail {
    pub n_max: usize,
    pub imbalance_factor: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseKind {
    Symmetric,
    Asymmetric,
}

/// Synthetic label noise on the training split (the test split stays clean).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    pub kind: NoiseKind,
    pub rate: f64,
    /// Asymmetric flips as `[from, to]` class pairs; default: the
    /// Fashion-MNIST pairs (T-shirt->Shirt, Pullover->Coat, ...).
    pub flips: Option<Vec<[usize; 2]>>,
}

/// The validation split that chooses epochs and hyper-parameters (never the test split).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Validation {
    /// With a long tail: a balanced validation set of this many images per
    /// class, drawn from the training images left out of the long-tailed subset.
    pub per_class: usize,
    /// Without a long tail: this fraction of the training split (stratified).
    pub fraction: f64,
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            per_class: 20,
            fraction: 0.15,
        }
    }
}

/// Where the memory comes from and which variants to study.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// `train`: the data set's whole training split (images, and captions as
    /// text values where present; labels are not stored), or `dir:PATH`: an
    /// existing memory directory.
    pub source: String,
    /// Memory sizes to study (entries kept, sampled with a fixed seed); empty = all.
    pub sizes: Vec<usize>,
    /// Memories that grow from each seed's training images: a memory of
    /// size S holds the seed's training split, then S minus that many of
    /// the other training-split images (sampled with a fixed seed, so a
    /// smaller memory is part of every larger one). Each seed gets its own
    /// memories. The smallest size is the training images alone.
    pub grow_from_training: bool,
    /// Pollution levels: with `pollution_mode = entries`, the fraction of
    /// the memory's entries that are irrelevant; with `retrieved`, the
    /// fraction of every query's retrieved neighbours that are.
    pub pollution: Vec<f64>,
    /// The data set the irrelevant entries come from (a data set spec).
    pub irrelevant: Option<String>,
    pub pollution_mode: PollutionMode,
    /// Another data set's images stored after the training split's (a data
    /// set spec; its train and test splits alike): an external image-text
    /// memory beside the labelled images. Their labels are not stored, so
    /// label values and the module's vote count the training images only;
    /// their captions give text values. The memory is named `train+extra`.
    pub extra: Option<String>,
}

/// How a pollution level is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PollutionMode {
    /// That fraction of the memory's entries are irrelevant (the memory size
    /// held fixed): what a query retrieves depends on how far the irrelevant
    /// entries lie from it.
    #[default]
    Entries,
    /// The memory holds the relevant entries and the irrelevant ones next to
    /// them, and each retrieved neighbour is swapped, with that probability,
    /// for a random irrelevant entry: a retriever that returns irrelevant
    /// entries at a known rate, whatever the embedding space's geometry.
    Retrieved,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            source: "train".into(),
            sizes: Vec::new(),
            grow_from_training: false,
            pollution: vec![0.0],
            irrelevant: None,
            pollution_mode: PollutionMode::Entries,
            extra: None,
        }
    }
}

/// How the study finds each query's neighbours.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    /// `exact` (every key scored), `hnsw` (each memory's HNSW index, built
    /// where it is missing or stale) or `int8` (each memory's int8 keys,
    /// made where they are missing or stale).
    pub engine: Engine,
    /// HNSW's beam width (default [`ramem_index::DEFAULT_EF`]), or the rows
    /// re-scored per query from int8 keys (default 4 x k); at least k is used.
    pub ef: Option<usize>,
    /// HNSW build settings, where the study builds an index.
    pub m: usize,
    pub ef_construction: usize,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        let build = ramem_index::HnswParams::default();
        RetrievalConfig {
            engine: Engine::Exact,
            ef: None,
            m: build.m,
            ef_construction: build.ef_construction,
        }
    }
}

/// The `[train]` table: the model crate's [`TrainConfig`] (every field but
/// the per-run `seed`, `checkpoint_dir` and `resume`) and the two options
/// only a study has.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTable {
    /// Shared by every trained method (its `seed` is set per run).
    pub options: TrainConfig,
    /// Learning rate of the linear heads (linear probe, uniform mean);
    /// `auto` where left out.
    pub head_learning_rate: Option<f64>,
    /// Models trained per method and seed, from different initialisations
    /// and batch orders, whose probabilities are averaged (1 = one model),
    /// for every trained method alike.
    pub ensemble: usize,
    /// The settings given as `auto`: each trained method chooses them on
    /// the validation split ([`crate::auto`]).
    pub auto: BTreeSet<AutoSetting>,
}

/// The `[mam]` table: the module's options, some of which may be `auto`
/// (`hidden`, `fusion`: chosen on validation with the `[train]` settings,
/// [`crate::auto`]; `vote`: chosen on validation after training), as they
/// are where the table leaves them out. Reads as the [`MamConfig`] it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct MamTable {
    pub config: MamConfig,
    pub auto: BTreeSet<AutoSetting>,
}

impl std::ops::Deref for MamTable {
    type Target = MamConfig;
    fn deref(&self) -> &MamConfig {
        &self.config
    }
}

impl Default for MamTable {
    fn default() -> Self {
        MamTable {
            config: MamConfig {
                vote: ramem_model::VoteSetting::Auto,
                ..MamConfig::default()
            },
            auto: AutoSetting::MODULE.into(),
        }
    }
}

impl<'de> Deserialize<'de> for MamTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        // `vote` reads its own "auto", and is `auto` where left out.
        let vote = table
            .remove("vote")
            .unwrap_or_else(|| toml::Value::String("auto".into()));
        let auto = take_auto(&mut table, &AutoSetting::MODULE, "mam").map_err(D::Error::custom)?;
        table.insert("vote".into(), vote);
        let config: MamConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| D::Error::custom(e.message()))?;
        Ok(MamTable { config, auto })
    }
}

/// Takes the `settings` given as `"auto"` out of `table` (their values
/// come from the search) and returns them with those `table` leaves out:
/// a setting not given is `auto`, so a new study file fits its data
/// without hand-tuning, and a file that gives a value keeps it.
fn take_auto(
    table: &mut toml::Table,
    settings: &[AutoSetting],
    name: &str,
) -> std::result::Result<BTreeSet<AutoSetting>, String> {
    let auto: BTreeSet<AutoSetting> = settings
        .iter()
        .copied()
        .filter(|s| match table.get(s.field()) {
            None => true,
            Some(value) => value.as_str() == Some("auto"),
        })
        .collect();
    for setting in &auto {
        table.remove(setting.field());
    }
    if let Some((field, _)) = table.iter().find(|(_, v)| v.as_str() == Some("auto")) {
        return Err(format!(
            "{name}.{field} cannot be \"auto\"; the settings that can: {}",
            settings
                .iter()
                .map(|s| s.field())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(auto)
}

/// `[train]` fields that a study sets itself, per run.
const PER_RUN_TRAIN_FIELDS: [&str; 3] = ["seed", "checkpoint_dir", "resume"];

impl Default for TrainTable {
    fn default() -> Self {
        TrainTable {
            options: TrainConfig::default(),
            head_learning_rate: None,
            ensemble: 1,
            auto: AutoSetting::ALL.into(),
        }
    }
}

impl<'de> Deserialize<'de> for TrainTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        if let Some(field) = PER_RUN_TRAIN_FIELDS
            .iter()
            .find(|f| table.contains_key(**f))
        {
            return Err(D::Error::custom(format!(
                "train.{field} is set by the study for each run (seeds come from `seeds`)"
            )));
        }
        let auto = take_auto(&mut table, &AutoSetting::ALL, "train").map_err(D::Error::custom)?;
        let mut take = |name: &str| table.remove(name);
        let head_learning_rate = take("head_learning_rate")
            .map(|v| v.try_into::<f64>())
            .transpose()
            .map_err(|e| D::Error::custom(format!("train.head_learning_rate: {e}")))?;
        let ensemble = take("ensemble")
            .map(|v| v.try_into::<usize>())
            .transpose()
            .map_err(|e| D::Error::custom(format!("train.ensemble: {e}")))?
            .unwrap_or(1);
        let options: TrainConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| D::Error::custom(e.message()))?;
        Ok(TrainTable {
            options,
            head_learning_rate,
            ensemble,
            auto,
        })
    }
}

impl TrainTable {
    /// The training options of one run: seed `seed` at `learning_rate`.
    pub fn config(&self, seed: u64, learning_rate: f64) -> TrainConfig {
        TrainConfig {
            seed,
            learning_rate,
            ..self.options.clone()
        }
    }

    /// The rate a method of `kind` trains at.
    pub fn rate(&self, kind: RateKind) -> f64 {
        match kind {
            RateKind::Heads => self.head_rate(),
            RateKind::Base | RateKind::Module => self.options.learning_rate,
        }
    }

    /// The rate of the linear heads.
    pub fn head_rate(&self) -> f64 {
        self.head_learning_rate
            .unwrap_or(self.options.learning_rate)
    }
}

impl StudyConfig {
    /// Reads and checks a study file; errors name the file (and the unknown
    /// field or bad value).
    pub fn read(path: &Path) -> Result<StudyConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading study config {}", path.display()))?;
        let config = StudyConfig::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), format!("{e:#}").trim_end()))?;
        Ok(config)
    }

    /// [`StudyConfig::read`] with settings changed: each of `sets` is
    /// `KEY=VALUE`, KEY a dotted path (`mam.vote`, `train.epochs`, `seeds`)
    /// and VALUE a TOML value (`[0, 1]`, `1e-3`, `\"auto\"`; a bare word is
    /// read as a string). Errors name the file or the setting.
    pub fn read_with(path: &Path, sets: &[String]) -> Result<StudyConfig> {
        if sets.is_empty() {
            return StudyConfig::read(path);
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading study config {}", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        for set in sets {
            apply_setting(&mut table, set).with_context(|| format!("--set {set}"))?;
        }
        let text = toml::to_string(&table)?;
        StudyConfig::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} with {}: {}",
                path.display(),
                sets.join(", "),
                format!("{e:#}").trim_end()
            )
        })
    }

    /// The settings given as `auto`, of `[train]` and `[mam]` together.
    pub fn auto_settings(&self) -> BTreeSet<AutoSetting> {
        self.train.auto.union(&self.mam.auto).copied().collect()
    }

    /// What `method` searches over for seed `seed` on `train_images`
    /// training images: the given settings, the `auto` ones and, where it
    /// retrieves and `k` is `auto`, k.
    pub fn search_space(&self, method: Method, seed: u64, train_images: usize) -> SearchSpace<'_> {
        let rate = method.rate_kind();
        SearchSpace {
            base: self.train.config(seed, self.train.rate(rate)),
            auto: self.auto_settings(),
            rate,
            budget: &self.auto,
            train_images,
            k: (method.retrieves() && self.k.is_auto()).then(|| self.k.values()),
        }
    }

    /// Parses and checks the text of a study file.
    pub fn parse(text: &str) -> Result<StudyConfig> {
        let config: StudyConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        config.check()?;
        Ok(config)
    }

    /// Checks what the types cannot: ranges, and options that need each other.
    pub fn check(&self) -> Result<()> {
        if self.seeds.is_empty() || self.methods.is_empty() {
            bail!("seeds and methods must not be empty");
        }
        if self.parallel_seeds == 0 {
            bail!("parallel_seeds must be at least 1");
        }
        if self.k.values().is_empty() || self.k.values().contains(&0) {
            bail!("k must list at least one value, each at least 1");
        }
        if self.values.is_empty() {
            bail!(
                "values must list at least one of {}",
                ValueChoice::ALL.map(|v| v.name()).join(", ")
            );
        }
        if let Some(labelled) = self.values.iter().find(|v| v.uses_labels()) {
            if self.memory.source != "train" && self.memory_dir().is_none() {
                bail!(
                    "values {:?} show each neighbour's label, which only a memory built from \
                     the study's training split (`[memory] source = \"train\"`) or a labelled \
                     memory (`dir:PATH`, `milvus://...`) can know; memory source {:?} has none",
                    labelled.name(),
                    self.memory.source
                );
            }
        }
        if let Some(noise) = &self.noise {
            if !(0.0..1.0).contains(&noise.rate) {
                bail!("noise rate {} is not in [0, 1)", noise.rate);
            }
        }
        let m = &self.memory;
        if m.pollution.is_empty() {
            bail!("memory.pollution must list at least one fraction (0.0 for none)");
        }
        if let Some(p) = m.pollution.iter().find(|p| !(0.0..1.0).contains(*p)) {
            bail!("memory.pollution {p} is not in [0, 1)");
        }
        if m.pollution.iter().any(|&p| p > 0.0) && m.irrelevant.is_none() {
            bail!("memory.pollution above 0 needs memory.irrelevant (a data set spec)");
        }
        if m.source != "train" && self.memory_dir().is_none() {
            bail!(
                "memory.source {:?} must be \"train\", \"dir:PATH\" or \
                 \"milvus://HOST:PORT/COLLECTION\"",
                m.source
            );
        }
        if self.memory_dir().is_some()
            && (m.pollution.iter().any(|&p| p > 0.0) || !m.sizes.is_empty())
        {
            bail!(
                "memory.pollution and memory.sizes shape the memories a study builds from its \
                 training split (source = \"train\"); memory.source {:?} is used as it is",
                m.source
            );
        }
        if m.grow_from_training
            && (self.memory_dir().is_some() || m.pollution.iter().any(|&p| p > 0.0))
        {
            bail!(
                "memory.grow_from_training grows memories from the training split (source = \
                 \"train\") without pollution"
            );
        }
        if m.extra.is_some()
            && (m.source != "train"
                || m.grow_from_training
                || !m.sizes.is_empty()
                || m.irrelevant.is_some()
                || m.pollution.iter().any(|&p| p > 0.0))
        {
            bail!(
                "memory.extra adds another data set's images to the memory built from the whole                  training split (source = \"train\"): it takes no sizes, pollution, \
                 irrelevant set or grow_from_training"
            );
        }
        self.auto.check()?;
        let r = &self.retrieval;
        if r.ef == Some(0) || r.m < 2 || r.ef_construction == 0 {
            bail!("retrieval.ef and retrieval.ef_construction must be at least 1, retrieval.m at least 2");
        }
        if r.engine == Engine::Exact && r.ef.is_some() {
            bail!("retrieval.ef is HNSW's beam width (or the rows int8 search re-scores): set retrieval.engine = \"hnsw\" or \"int8\" to use it");
        }
        let t = &self.train;
        if t.options.epochs == 0 || t.options.batch_size == 0 || t.ensemble == 0 {
            bail!("train.epochs, train.batch_size and train.ensemble must be at least 1");
        }
        let mam = &self.mam;
        if (mam.input_dim, mam.value_dim, mam.classes) != (0, 0, 0) {
            bail!(
                "[mam] input_dim, value_dim and classes come from the data (the encoder, the \
                 value kinds and the data set's classes); leave them out"
            );
        }
        if self.runs(Method::Mam) {
            // The module's own checks (dimensions aside), before any data is read.
            mam.with_dims(1, 1, 1)
                .validate()
                .map_err(|e| anyhow::anyhow!("[mam]: {e}"))?;
        }
        Ok(())
    }

    /// The existing memory, for `source = "dir:PATH"` (a directory) or
    /// `source = "milvus://HOST:PORT/COLLECTION"`.
    pub fn memory_dir(&self) -> Option<PathBuf> {
        let source = &self.memory.source;
        match source.strip_prefix("dir:") {
            Some(dir) => Some(PathBuf::from(dir)),
            None => source
                .starts_with("milvus://")
                .then(|| PathBuf::from(source)),
        }
    }

    /// Whether the study runs `method`.
    pub fn runs(&self, method: Method) -> bool {
        self.methods.contains(&method)
    }

    /// The largest k of the grid (neighbour lists are searched this long).
    pub fn max_k(&self) -> usize {
        self.k.values().iter().copied().max().unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_the_command_line_replace_those_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("study.toml");
        std::fs::write(&path, format!("{BASE}[train]\nepochs = 5\n")).unwrap();
        let sets = [
            "train.epochs=7".to_string(),
            "mam.vote=auto".to_string(),
            "seeds=[3, 4]".to_string(),
            "train.learning_rate=\"auto\"".to_string(),
        ];
        let config = StudyConfig::read_with(&path, &sets).unwrap();
        assert_eq!(config.train.options.epochs, 7);
        assert_eq!(config.mam.vote, ramem_model::VoteSetting::Auto);
        assert_eq!(config.seeds, vec![3, 4]);
        assert!(config.train.auto.contains(&AutoSetting::LearningRate));
        let err = StudyConfig::read_with(&path, &["train.epochs".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--set train.epochs"), "{err}");
        let err = format!(
            "{:#}",
            StudyConfig::read_with(&path, &["mam.hiden=3".to_string()]).unwrap_err()
        );
        assert!(
            err.contains("hiden") && err.contains("mam.hiden=3"),
            "{err}"
        );
    }

    /// Every study file shipped in examples/ reads and passes the checks
    /// (users start from them; a renamed field must not break one silently).
    #[test]
    fn shipped_examples_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                StudyConfig::read(&path).unwrap_or_else(|e| panic!("{e:#}"));
                read += 1;
            }
        }
        assert!(read >= 6, "only {read} study files in {}", dir.display());
    }

    const BASE: &str = "name = \"t\"\ndataset = \"idx:/nowhere\"\n";

    /// Module options that cannot work together are refused when the file
    /// is read, naming the option, not after the embeddings are computed.
    #[test]
    fn module_options_are_checked_when_the_file_is_read() {
        let base = format!("{BASE}[mam]\n");
        for (lines, name) in [
            ("fusion_gate = true\n", "fusion_gate"),
            (
                "query_branch_learning_rate = 1e-2\n",
                "query_branch_learning_rate",
            ),
            ("hidden = 100\nheads = 8\n", "hidden"),
            ("input_dim = 1280\n", "input_dim"),
        ] {
            let err = format!(
                "{:#}",
                StudyConfig::parse(&format!("{base}{lines}")).unwrap_err()
            );
            assert!(err.contains(name), "{lines}: {err}");
            let fused = format!("{base}fusion = true\nhidden = 64\nheads = 8\n{lines}");
            if name != "hidden" && name != "input_dim" {
                StudyConfig::parse(&fused).unwrap();
            }
        }
    }

    /// `[train]` reads into the model crate's training options, with the
    /// study's own two fields beside them; an unknown or per-run field is
    /// named.
    #[test]
    fn the_train_table_is_the_model_crates_training_options() {
        let config = StudyConfig::parse(&format!(
            "{BASE}[train]\nepochs = 7\nlabel_smoothing = 0.1\nhead_learning_rate = 1e-2\nensemble = 2\n"
        ))
        .unwrap();
        let t = &config.train;
        assert_eq!((t.options.epochs, t.options.label_smoothing), (7, 0.1));
        assert_eq!((t.head_rate(), t.ensemble), (1e-2, 2));
        let run = t.config(5, 3e-3);
        assert_eq!((run.seed, run.learning_rate, run.epochs), (5, 3e-3, 7));
        for (line, name) in [("epochz = 3", "epochz"), ("seed = 3", "seed")] {
            let err = StudyConfig::parse(&format!("{BASE}[train]\n{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{err}");
        }
        let defaults = StudyConfig::parse(BASE).unwrap();
        assert_eq!(defaults.train, TrainTable::default());
        assert_eq!(defaults.mam, MamTable::default());
        assert_eq!(defaults.methods, Method::ALL);
    }

    /// A deciding setting left out is `auto`, so a new study file fits its
    /// data; one given keeps its value.
    #[test]
    fn settings_left_out_are_auto_and_given_ones_are_kept() {
        let defaults = StudyConfig::parse(BASE).unwrap();
        let every: BTreeSet<AutoSetting> = AutoSetting::ALL
            .into_iter()
            .chain(AutoSetting::MODULE)
            .collect();
        assert_eq!(defaults.auto_settings(), every);
        assert_eq!(defaults.mam.vote, ramem_model::VoteSetting::Auto);
        assert!(defaults.k.is_auto());
        assert_eq!(defaults.k.values(), NEIGHBOURS);
        assert_eq!(defaults.k.runs(), [None]);

        let given = StudyConfig::parse(&format!(
            "{BASE}k = 16
[train]
epochs = 7
learning_rate = 3e-3
[mam]
hidden = 256
vote = \"off\"
"
        ))
        .unwrap();
        let auto = given.auto_settings();
        for setting in [
            AutoSetting::Epochs,
            AutoSetting::LearningRate,
            AutoSetting::Hidden,
        ] {
            assert!(!auto.contains(&setting), "{setting}");
        }
        assert!(auto.contains(&AutoSetting::WeightDecay) && auto.contains(&AutoSetting::Fusion));
        assert_eq!((given.train.options.epochs, given.mam.hidden), (7, 256));
        assert!(given.mam.vote.is_off());
        assert_eq!(given.k, KChoice::Grid(vec![16]));
        assert_eq!(given.k.runs(), [Some(16)]);
        // The search space of a method: k only for those that retrieve.
        assert!(defaults.search_space(Method::Mam, 0, 100).k.is_some());
        assert!(defaults
            .search_space(Method::LinearProbe, 0, 100)
            .k
            .is_none());
        assert!(given.search_space(Method::Mam, 0, 100).k.is_none());

        for (line, ok) in [
            ("k = [8, 32]", Some(KChoice::Grid(vec![8, 32]))),
            ("k = \"auto\"", Some(KChoice::Auto)),
            ("k = \"many\"", None),
            ("k = [0]", None),
            ("k = -1", None),
            ("k = []", None),
        ] {
            match (StudyConfig::parse(&format!("{BASE}{line}\n")), ok) {
                (Ok(config), Some(k)) => assert_eq!(config.k, k, "{line}"),
                (Err(e), None) => assert!(e.to_string().contains('k'), "{line}: {e}"),
                (other, _) => panic!("{line}: {other:?}"),
            }
        }
        assert_eq!(KChoice::parse("12"), Ok(KChoice::Grid(vec![12])));
        assert_eq!(KChoice::parse("auto"), Ok(KChoice::Auto));
        assert!(KChoice::parse("0").is_err() && KChoice::parse("x").is_err());
    }

    #[test]
    fn methods_and_engines_are_read_by_name() {
        let config = StudyConfig::parse(&format!(
            "{BASE}methods = [\"mam\", \"knn_vote\"]\n[retrieval]\nengine = \"hnsw\"\nef = 48\n"
        ))
        .unwrap();
        assert_eq!(config.methods, [Method::Mam, Method::KnnVote]);
        assert_eq!(
            (config.retrieval.engine, config.retrieval.ef),
            (Engine::Hnsw, Some(48))
        );
        let err = StudyConfig::parse(&format!("{BASE}methods = [\"mamba\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mamba") && err.contains("tip_adapter_f"),
            "{err}"
        );
        let err = StudyConfig::parse(&format!("{BASE}[retrieval]\nef = 48\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retrieval.engine"), "{err}");
        for method in Method::ALL {
            let text = format!("{BASE}methods = [\"{method}\"]\n");
            assert_eq!(StudyConfig::parse(&text).unwrap().methods, [method]);
        }
    }

    #[test]
    fn pollution_needs_a_memory_built_from_the_training_split() {
        let base = format!("{BASE}values = [\"image\", \"image+label\"]\n");
        let config = StudyConfig::parse(&base).unwrap();
        assert_eq!(config.values[1], ValueChoice::ImageLabel);
        // Label values from an existing memory: its own labels (checked when it opens).
        let text = format!("{base}[memory]\nsource = \"dir:/some/memory\"\n");
        let config = StudyConfig::parse(&text).unwrap();
        assert_eq!(config.memory_dir(), Some(PathBuf::from("/some/memory")));
        let text = format!(
            "{}[memory]\nsource = \"dir:/some/memory\"\npollution = [0.0, 0.5]\nirrelevant = \"idx:/x\"\n",
            base.replace(", \"image+label\"", "")
        );
        let err = format!("{:#}", StudyConfig::parse(&text).unwrap_err());
        assert!(
            err.contains("memory.pollution") && err.contains("dir:/some/memory"),
            "{err}"
        );
        let err = StudyConfig::parse(&base.replace("image+label", "labels"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("labels") && err.contains("text+label"),
            "{err}"
        );
    }
}
