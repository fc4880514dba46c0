//! Sentence embeddings from a BERT-family model in the sentence-transformers
//! layout (all-MiniLM-L6-v2 is the one ramem ships an installer for).
//!
//! A model directory holds:
//!
//! | file | what it gives |
//! |---|---|
//! | `config.json` | the BERT hyper-parameters (hidden size, layers, heads, ...) |
//! | `model.safetensors` | the weights, with Hugging Face `BertModel` names |
//! | `tokenizer.json` | the WordPiece tokenizer |
//! | `1_Pooling/config.json` | how token vectors become one sentence vector (mean or CLS) |
//! | `sentence_bert_config.json` (optional) | `max_seq_length`, the truncation length |
//!
//! [`SentenceEncoder::embed`] tokenizes, runs the transformer, pools with the
//! attention mask and L2-normalises, so a dot product of two rows is their
//! cosine similarity.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use tokenizers::{Encoding, Tokenizer};

use crate::model_files::{load_tokenizer, load_weights};

/// What to tell a user whose model directory is missing or incomplete.
const INSTALL_HINT: &str =
    "for all-MiniLM-L6-v2 run `ramem assets install minilm-l6` (or point RAMEM_MINILM_DIR at the model directory)";

/// Sentences per forward pass inside [`SentenceEncoder::embed`]. Inputs are
/// sorted by token count first, so each pass pads only to its own longest
/// sentence; 64 keeps the activations of a 256-token batch small (~40 MB for
/// MiniLM) while giving the matrix products enough rows to run at full speed.
const DEFAULT_BATCH_SIZE: usize = 64;

/// How the token vectors of one sentence are reduced to one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average of the token vectors, padding excluded (MiniLM's choice).
    Mean,
    /// The vector of the first token, `[CLS]`.
    Cls,
}

/// The fields of `1_Pooling/config.json` that pick a pooling mode.
#[derive(Debug, Deserialize)]
struct PoolingFile {
    #[serde(default)]
    word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Debug, Deserialize)]
struct SentenceBertFile {
    max_seq_length: Option<usize>,
}

/// A frozen BERT sentence encoder: tokenizer, transformer and pooling.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    dim: usize,
    max_len: usize,
    batch_size: usize,
    device: Device,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("pooling", &self.pooling)
            .field("dim", &self.dim)
            .field("max_len", &self.max_len)
            .field("batch_size", &self.batch_size)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// `dir/name`, or an error naming the missing file and how to install it.
fn required_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "sentence encoder file {} is missing; {INSTALL_HINT}",
            path.display()
        );
    }
    Ok(path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing JSON in {}", path.display()))
}

fn parse_pooling(path: &Path, hidden_size: usize) -> Result<Pooling> {
    let file: PoolingFile = read_json(path)?;
    if let Some(d) = file.word_embedding_dimension {
        if d != hidden_size {
            bail!(
                "{}: word_embedding_dimension is {d} but config.json has hidden_size {hidden_size}",
                path.display()
            );
        }
    }
    let modes = [
        ("pooling_mode_mean_tokens", file.pooling_mode_mean_tokens),
        ("pooling_mode_cls_token", file.pooling_mode_cls_token),
        ("pooling_mode_max_tokens", file.pooling_mode_max_tokens),
        (
            "pooling_mode_mean_sqrt_len_tokens",
            file.pooling_mode_mean_sqrt_len_tokens,
        ),
        (
            "pooling_mode_weightedmean_tokens",
            file.pooling_mode_weightedmean_tokens,
        ),
        ("pooling_mode_lasttoken", file.pooling_mode_lasttoken),
    ];
    let on: Vec<&str> = modes
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
    match on.as_slice() {
        ["pooling_mode_mean_tokens"] => Ok(Pooling::Mean),
        ["pooling_mode_cls_token"] => Ok(Pooling::Cls),
        [] => bail!("{}: no pooling mode is enabled", path.display()),
        [one] => bail!(
            "{}: pooling mode {one} is not supported (only mean and cls are)",
            path.display()
        ),
        many => bail!(
            "{}: several pooling modes are enabled ({}); only one of mean or cls is supported",
            path.display(),
            many.join(", ")
        ),
    }
}

impl SentenceEncoder {
    /// Loads a sentence-transformers model directory (see the module docs for
    /// the files it needs) onto `device`.
    pub fn load(model_dir: &Path, device: &Device) -> Result<Self> {
        if !model_dir.is_dir() {
            bail!(
                "sentence encoder directory {} does not exist; {INSTALL_HINT}",
                model_dir.display()
            );
        }
        let config_path = required_file(model_dir, "config.json")?;
        let weights_path = required_file(model_dir, "model.safetensors")?;
        let tokenizer_path = required_file(model_dir, "tokenizer.json")?;
        let pooling_path = required_file(model_dir, "1_Pooling/config.json")?;

        let config: BertConfig = read_json(&config_path)?;
        if config.hidden_size == 0 || !divides(config.num_attention_heads, config.hidden_size) {
            bail!(
                "{}: hidden_size {} is not a positive multiple of num_attention_heads {}",
                config_path.display(),
                config.hidden_size,
                config.num_attention_heads
            );
        }
        let pooling = parse_pooling(&pooling_path, config.hidden_size)?;

        let sbert_path = model_dir.join("sentence_bert_config.json");
        let max_len = if sbert_path.is_file() {
            let sbert: SentenceBertFile = read_json(&sbert_path)?;
            sbert.max_seq_length.unwrap_or(512)
        } else {
            512
        }
        // Positions past the table would index out of range.
        .min(config.max_position_embeddings);
        if max_len < 2 {
            bail!(
                "{}: max_seq_length {max_len} leaves no room for [CLS] and [SEP]",
                sbert_path.display()
            );
        }

        let tokenizer = load_tokenizer(&tokenizer_path, max_len, config.vocab_size, &config_path)?;
        let vb = load_weights(&weights_path, device)?;
        let model = BertModel::load(vb, &config).with_context(|| {
            format!(
                "weights in {} do not match {}",
                weights_path.display(),
                config_path.display()
            )
        })?;

        Ok(Self {
            model,
            tokenizer,
            pooling,
            dim: config.hidden_size,
            max_len,
            batch_size: DEFAULT_BATCH_SIZE,
            device: device.clone(),
        })
    }

    /// Length of an embedding (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Longest input in tokens, `[CLS]` and `[SEP]` included; longer inputs
    /// are truncated. From `sentence_bert_config.json` (256 for MiniLM-L6),
    /// else 512, and never more than the model's position table.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The pooling mode read from `1_Pooling/config.json`.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Sets how many sentences go through the transformer at once (at least 1).
    pub fn set_batch_size(&mut self, batch_size: usize) {
        self.batch_size = batch_size.max(1);
    }

    /// The token ids `embed` would feed the model for `text`, `[CLS]` and
    /// `[SEP]` included, after truncation.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeds `texts` into an `(N, dim)` f32 tensor of unit-length rows, in
    /// input order. An empty slice gives a `(0, dim)` tensor.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor> {
        if texts.is_empty() {
            return Ok(Tensor::zeros((0, self.dim), DType::F32, &self.device)?);
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenizing {} texts: {e}", texts.len()))?;

        // Sorting by length makes each batch pad only to near-equal lengths;
        // padded positions are masked out, so the result does not depend on
        // which sentences share a batch.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());

        let mut pieces = Vec::with_capacity(texts.len().div_ceil(self.batch_size));
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            pieces.push(self.embed_batch(&batch)?);
        }
        let sorted = Tensor::cat(&pieces, 0)?;

        // Row r of `sorted` is text order[r]; gather the rows back.
        let mut position = vec![0u32; texts.len()];
        for (r, &i) in order.iter().enumerate() {
            position[i] = r as u32;
        }
        let position = Tensor::new(position.as_slice(), &self.device)?;
        Ok(sorted.index_select(&position, 0)?)
    }

    /// One forward pass over already tokenized sentences.
    fn embed_batch(&self, batch: &[&Encoding]) -> Result<Tensor> {
        let n = batch.len();
        if batch.iter().any(|e| e.get_ids().is_empty()) {
            bail!("the tokenizer produced an empty token sequence (no [CLS]/[SEP] post-processor in tokenizer.json?)");
        }
        let longest = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(1);
        let mut ids = vec![0u32; n * longest];
        let mut mask = vec![0u32; n * longest];
        for (row, enc) in batch.iter().enumerate() {
            let len = enc.get_ids().len();
            ids[row * longest..row * longest + len].copy_from_slice(enc.get_ids());
            mask[row * longest..row * longest + len].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, longest), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, longest), &self.device)?;
        let token_types = ids.zeros_like()?;

        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?; // (n, L, H)
        let pooled = match self.pooling {
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, L, 1)
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (n, H)
                let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
                summed.broadcast_div(&counts)?
            }
            Pooling::Cls => hidden.i((.., 0, ..))?.contiguous()?,
        };
        l2_normalize(&pooled)
    }
}

/// Whether `d` is positive and divides `n`.
pub(crate) fn divides(d: usize, n: usize) -> bool {
    d != 0 && n.is_multiple_of(d)
}

/// Divides each row by its Euclidean length (a zero row stays zero).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}
