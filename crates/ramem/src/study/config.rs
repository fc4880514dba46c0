//! The study file (`ramem study --config FILE.toml`): which data set, which
//! protocol, which memories, methods, value kinds, k and seeds. Every table
//! refuses unknown fields, so a typo is an error naming the field instead of
//! a silently ignored setting.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ramem_model::mam::Combine;
use ramem_model::{TrainConfig, ValueChoice};
use serde::Deserialize;

/// The methods a study can run, by their report names.
pub const METHODS: [&str; 6] = [
    "linear_probe",
    "knn_vote",
    "uniform_mean",
    "tip_adapter",
    "tip_adapter_f",
    "mam",
];

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
    pub methods: Vec<String>,
    /// Neighbours per query; every value is one grid point.
    #[serde(default = "default_k")]
    pub k: Vec<usize>,
    /// Value kinds attended over: image, text, both.
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
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub mam: MamSection,
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
fn default_methods() -> Vec<String> {
    METHODS.iter().map(|m| m.to_string()).collect()
}
fn default_k() -> Vec<usize> {
    vec![32]
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
    /// Pollution levels: with `pollution_mode = entries`, the fraction of
    /// the memory's entries that are irrelevant; with `retrieved`, the
    /// fraction of every query's retrieved neighbours that are.
    pub pollution: Vec<f64>,
    /// The data set the irrelevant entries come from (a data set spec).
    pub irrelevant: Option<String>,
    pub pollution_mode: PollutionMode,
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
            pollution: vec![0.0],
            irrelevant: None,
            pollution_mode: PollutionMode::Entries,
        }
    }
}

/// Training options shared by every trained method.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    /// Logit adjustment tau for every trained method alike (0 = off).
    pub logit_adjustment: f64,
    /// Learning rate of the linear heads (linear probe, uniform mean);
    /// default: `learning_rate`.
    pub head_learning_rate: Option<f64>,
    /// Exponential moving average of the weights (decay, 0 = off), for every trained method.
    pub ema: f64,
    /// Label smoothing epsilon (0 = off), for every trained method.
    pub label_smoothing: f64,
    /// Models trained per method and seed, from different initialisations
    /// and batch orders, whose probabilities are averaged (1 = one model),
    /// for every trained method alike.
    pub ensemble: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        let d = TrainConfig::default();
        TrainSection {
            epochs: d.epochs,
            batch_size: d.batch_size,
            learning_rate: d.learning_rate,
            weight_decay: d.weight_decay,
            warmup_epochs: d.warmup_epochs,
            logit_adjustment: d.logit_adjustment,
            head_learning_rate: None,
            ema: d.ema,
            label_smoothing: d.label_smoothing,
            ensemble: 1,
        }
    }
}

impl TrainSection {
    pub fn config(&self, seed: u64, learning_rate: f64) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate,
            weight_decay: self.weight_decay,
            warmup_epochs: self.warmup_epochs,
            seed,
            logit_adjustment: self.logit_adjustment,
            checkpoint_dir: None,
            resume: false,
            ema: self.ema,
            label_smoothing: self.label_smoothing,
        }
    }
}

/// Memory attention module options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MamSection {
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub dropout: f32,
    pub include_query: bool,
    pub fusion: bool,
    pub combine: Combine,
    pub feed_forward: bool,
    pub uniform_mix: bool,
    pub similarity: bool,
    pub attention_prior: f32,
    /// Weight the fusion's two branches per query by a learned gate.
    pub fusion_gate: bool,
    /// The attention branch's weight in the fusion (default one half).
    pub fusion_weight: f32,
    /// Learning rate of the module's final classifier (default: the
    /// `[train]` learning rate); the attention keeps the `[train]` one.
    pub classifier_learning_rate: Option<f64>,
    /// Learning rate of the query-only branch (`fusion`; default: the
    /// `[train]` learning rate).
    pub query_branch_learning_rate: Option<f64>,
}

impl Default for MamSection {
    fn default() -> Self {
        let d = ramem_model::MamConfig::new(1, 1, 1);
        MamSection {
            hidden: d.hidden,
            heads: d.heads,
            layers: d.layers,
            dropout: d.dropout,
            include_query: d.include_query,
            fusion: d.fusion,
            combine: d.combine,
            feed_forward: d.feed_forward,
            uniform_mix: d.uniform_mix,
            similarity: d.similarity,
            attention_prior: d.attention_prior,
            fusion_gate: d.fusion_gate,
            fusion_weight: d.fusion_weight,
            classifier_learning_rate: None,
            query_branch_learning_rate: None,
        }
    }
}

impl MamSection {
    pub fn config(
        &self,
        input_dim: usize,
        value_dim: usize,
        classes: usize,
    ) -> ramem_model::MamConfig {
        ramem_model::MamConfig {
            input_dim,
            value_dim,
            classes,
            hidden: self.hidden,
            heads: self.heads,
            layers: self.layers,
            dropout: self.dropout,
            include_query: self.include_query,
            fusion: self.fusion,
            combine: self.combine,
            feed_forward: self.feed_forward,
            uniform_mix: self.uniform_mix,
            similarity: self.similarity,
            attention_prior: self.attention_prior,
            fusion_gate: self.fusion_gate,
            fusion_weight: self.fusion_weight,
            classifier_learning_rate: self.classifier_learning_rate,
            query_branch_learning_rate: self.query_branch_learning_rate,
        }
    }
}

impl StudyConfig {
    /// Reads and checks a study file; errors name the file (and the unknown
    /// field or bad value).
    pub fn read(path: &Path) -> Result<StudyConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading study config {}", path.display()))?;
        let config: StudyConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        config
            .check()
            .with_context(|| format!("study config {}", path.display()))?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        for method in &self.methods {
            if !METHODS.contains(&method.as_str()) {
                bail!("unknown method {method:?}; known: {}", METHODS.join(", "));
            }
        }
        if self.seeds.is_empty() || self.methods.is_empty() {
            bail!("seeds and methods must not be empty");
        }
        if self.parallel_seeds == 0 {
            bail!("parallel_seeds must be at least 1");
        }
        if self.k.is_empty() || self.k.contains(&0) {
            bail!("k must list at least one value, each at least 1");
        }
        if self.values.is_empty() {
            bail!(
                "values must list at least one of {}",
                ValueChoice::ALL.map(|v| v.name()).join(", ")
            );
        }
        if let Some(labelled) = self.values.iter().find(|v| v.uses_labels()) {
            if self.memory.source != "train" {
                bail!(
                    "values {:?} show each neighbour's training label, which only a memory \
                     built from the study's training split (`[memory] source = \"train\"`) \
                     can know; memory source {:?} has none",
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
        if m.source != "train" && !m.source.starts_with("dir:") {
            bail!(
                "memory.source {:?} must be \"train\" or \"dir:PATH\"",
                m.source
            );
        }
        if m.source.starts_with("dir:")
            && (m.pollution.iter().any(|&p| p > 0.0) || !m.sizes.is_empty())
        {
            bail!(
                "memory.pollution and memory.sizes shape the memories a study builds from its \
                 training split (source = \"train\"); memory.source {:?} is used as it is",
                m.source
            );
        }
        if self.train.epochs == 0 || self.train.batch_size == 0 || self.train.ensemble == 0 {
            bail!("train.epochs, train.batch_size and train.ensemble must be at least 1");
        }
        if self.runs_method("mam") {
            // The module's own checks (dimensions aside), before any data is read.
            self.mam
                .config(1, 1, 1)
                .validate()
                .map_err(|e| anyhow::anyhow!("[mam]: {e}"))?;
            if self.mam.query_branch_learning_rate.is_some() && !self.mam.fusion {
                bail!(
                    "mam.query_branch_learning_rate is the rate of the query-only branch, \
                     which only mam.fusion = true adds"
                );
            }
        }
        Ok(())
    }

    /// The existing memory directory, for `source = "dir:PATH"`.
    pub fn memory_dir(&self) -> Option<PathBuf> {
        self.memory.source.strip_prefix("dir:").map(PathBuf::from)
    }

    pub fn runs_method(&self, name: &str) -> bool {
        self.methods.iter().any(|m| m == name)
    }

    pub fn max_k(&self) -> usize {
        self.k.iter().copied().max().unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Module options that cannot work together are refused when the file
    /// is read, naming the option, not after the embeddings are computed.
    #[test]
    fn module_options_are_checked_when_the_file_is_read() {
        let base = "name = \"t\"\ndataset = \"idx:/nowhere\"\n[mam]\n";
        for (lines, name) in [
            ("fusion_gate = true\n", "fusion_gate"),
            (
                "query_branch_learning_rate = 1e-2\n",
                "query_branch_learning_rate",
            ),
            ("hidden = 100\nheads = 8\n", "hidden"),
        ] {
            let config: StudyConfig = toml::from_str(&format!("{base}{lines}")).unwrap();
            let err = format!("{:#}", config.check().unwrap_err());
            assert!(err.contains(name), "{lines}: {err}");
            let fused = format!("{base}fusion = true\nhidden = 64\nheads = 8\n{lines}");
            if name != "hidden" {
                let config: StudyConfig = toml::from_str(&fused).unwrap();
                config.check().unwrap();
            }
        }
    }

    #[test]
    fn label_values_and_pollution_need_a_memory_built_from_the_training_split() {
        let base =
            "name = \"t\"\ndataset = \"idx:/nowhere\"\nvalues = [\"image\", \"image+label\"]\n";
        let config: StudyConfig = toml::from_str(base).unwrap();
        assert_eq!(config.values[1], ValueChoice::ImageLabel);
        config.check().unwrap();
        let text = format!("{base}[memory]\nsource = \"dir:/some/memory\"\n");
        let config: StudyConfig = toml::from_str(&text).unwrap();
        let err = format!("{:#}", config.check().unwrap_err());
        assert!(
            err.contains("image+label") && err.contains("dir:/some/memory"),
            "{err}"
        );
        let text = format!(
            "{}[memory]\nsource = \"dir:/some/memory\"\npollution = [0.0, 0.5]\nirrelevant = \"idx:/x\"\n",
            base.replace(", \"image+label\"", "")
        );
        let config: StudyConfig = toml::from_str(&text).unwrap();
        let err = format!("{:#}", config.check().unwrap_err());
        assert!(
            err.contains("memory.pollution") && err.contains("dir:/some/memory"),
            "{err}"
        );
        let err = toml::from_str::<StudyConfig>(&base.replace("image+label", "labels"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("labels") && err.contains("text+label"),
            "{err}"
        );
    }
}
