//! CLIP image and text towers loaded from a directory in the Hugging Face
//! layout, embedding images and captions into one shared, L2-normalised space.
//!
//! A model directory holds:
//!
//! | file | what it gives |
//! |---|---|
//! | `config.json` | `text_config`, `vision_config` and `projection_dim` (as `CLIPModel` writes it) |
//! | `model.safetensors` | the weights with `CLIPModel` names (`text_model.…`, `vision_model.…`, `text_projection.weight`, `visual_projection.weight`, `logit_scale`) |
//! | `tokenizer.json` | the tokenizer, whose post-processor adds the start and end-of-text tokens |
//! | `preprocessor_config.json` (optional) | `image_mean` / `image_std` (0..1 scale) and `crop_size` |
//!
//! The transformer is written here rather than taken from
//! `candle_transformers::models::clip`, because that one fixes the layer-norm
//! epsilon and the activation, substitutes a random class embedding when the
//! weight is missing, and pools the text at the largest token id; this module
//! reads all of those from the config and pools at the end-of-text token as
//! `CLIPTextTransformer` does.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{
    layer_norm, linear, linear_no_bias, LayerNorm, LayerNormConfig, Linear, VarBuilder,
};
use serde::Deserialize;
use serde_json::Value;
use tokenizers::{Encoding, Tokenizer};

use crate::model_files::{load_tokenizer, load_weights};
use crate::text::{divides, l2_normalize};

/// OpenAI CLIP's normalisation constants, used when there is no
/// `preprocessor_config.json`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// See [`CLIP_MEAN`].
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Captions per text forward pass; inputs are sorted by length first.
const TEXT_BATCH: usize = 64;
/// Images per vision forward pass, bounding activation memory.
const IMAGE_BATCH: usize = 32;

const INSTALL_HINT: &str = "a CLIP directory in the Hugging Face layout needs config.json, model.safetensors and tokenizer.json";

// ---------------------------------------------------------------- config

fn default_text_vocab() -> usize {
    49408
}
fn default_text_hidden() -> usize {
    512
}
fn default_text_intermediate() -> usize {
    2048
}
fn default_text_heads() -> usize {
    8
}
fn default_text_positions() -> usize {
    77
}
fn default_eos() -> u32 {
    49407
}
fn default_vision_hidden() -> usize {
    768
}
fn default_vision_intermediate() -> usize {
    3072
}
fn default_vision_heads() -> usize {
    12
}
fn default_layers() -> usize {
    12
}
fn default_channels() -> usize {
    3
}
fn default_image_size() -> usize {
    224
}
fn default_patch() -> usize {
    32
}
fn default_act() -> String {
    "quick_gelu".to_string()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_projection() -> usize {
    512
}
fn default_logit_scale() -> f32 {
    2.6592
}

/// `text_config` of a Hugging Face `CLIPConfig`; absent fields take the
/// same defaults as `CLIPTextConfig`.
#[derive(Debug, Clone, Deserialize)]
struct TextConfig {
    #[serde(default = "default_text_vocab")]
    vocab_size: usize,
    #[serde(default = "default_text_hidden")]
    hidden_size: usize,
    #[serde(default = "default_text_intermediate")]
    intermediate_size: usize,
    #[serde(default = "default_layers")]
    num_hidden_layers: usize,
    #[serde(default = "default_text_heads")]
    num_attention_heads: usize,
    #[serde(default = "default_text_positions")]
    max_position_embeddings: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_eos")]
    eos_token_id: u32,
}

/// `vision_config` of a Hugging Face `CLIPConfig`, with `CLIPVisionConfig`'s
/// defaults.
#[derive(Debug, Clone, Deserialize)]
struct VisionConfig {
    #[serde(default = "default_vision_hidden")]
    hidden_size: usize,
    #[serde(default = "default_vision_intermediate")]
    intermediate_size: usize,
    #[serde(default = "default_layers")]
    num_hidden_layers: usize,
    #[serde(default = "default_vision_heads")]
    num_attention_heads: usize,
    #[serde(default = "default_channels")]
    num_channels: usize,
    #[serde(default = "default_image_size")]
    image_size: usize,
    #[serde(default = "default_patch")]
    patch_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
}

#[derive(Debug, Deserialize)]
struct TopConfig {
    #[serde(default)]
    text_config: Option<Value>,
    // Configs written by old versions keep the overrides in `*_dict`.
    #[serde(default)]
    text_config_dict: Option<Value>,
    #[serde(default)]
    vision_config: Option<Value>,
    #[serde(default)]
    vision_config_dict: Option<Value>,
    #[serde(default = "default_projection")]
    projection_dim: usize,
    #[serde(default = "default_logit_scale")]
    logit_scale_init_value: f32,
}

#[derive(Debug, Default, Deserialize)]
struct PreprocessorConfig {
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
    crop_size: Option<Value>,
}

fn sub_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    name: &str,
    main: Option<Value>,
    legacy: Option<Value>,
) -> Result<T> {
    let value = match (main, legacy) {
        (Some(v), _) if !v.is_null() => v,
        (_, Some(v)) if !v.is_null() => v,
        _ => bail!(
            "{}: no `{name}` section; this is not a Hugging Face CLIP config (a CLIPModel config.json has text_config and vision_config)",
            path.display()
        ),
    };
    serde_json::from_value(value).with_context(|| format!("{}: bad `{name}`", path.display()))
}

fn check_heads(path: &Path, tower: &str, hidden: usize, heads: usize) -> Result<()> {
    if hidden == 0 || !divides(heads, hidden) {
        bail!(
            "{}: {tower} hidden_size {hidden} is not a positive multiple of num_attention_heads {heads}",
            path.display()
        );
    }
    Ok(())
}

// ----------------------------------------------------------- transformer

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(path: &Path, tower: &str, name: &str) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "relu" => Self::Relu,
            other => bail!(
                "{}: {tower} hidden_act {other:?} is not supported (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu are)",
                path.display()
            ),
        })
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            // x * sigmoid(1.702 x), the approximation the original CLIP was trained with.
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}

/// Shape of one tower, shared by the text and vision encoders.
#[derive(Debug, Clone, Copy)]
struct Tower {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    eps: f64,
    act: Activation,
}

fn ln(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    layer_norm(
        size,
        LayerNormConfig {
            eps,
            ..Default::default()
        },
        vb,
    )
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(t: &Tower, vb: VarBuilder) -> candle_core::Result<Self> {
        let head_dim = t.hidden / t.heads;
        Ok(Self {
            q: linear(t.hidden, t.hidden, vb.pp("q_proj"))?,
            k: linear(t.hidden, t.hidden, vb.pp("k_proj"))?,
            v: linear(t.hidden, t.hidden, vb.pp("v_proj"))?,
            out: linear(t.hidden, t.hidden, vb.pp("out_proj"))?,
            heads: t.heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `x` (B, L, E); `mask` broadcastable to (B, heads, L, L), added to the scores.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, l, e) = x.dims3()?;
        let split = |t: Tensor| {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q.forward(x)? * self.scale)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let mut scores = q.matmul(&k.t()?)?; // (B, H, L, L)
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, e))?;
        self.out.forward(&ctx)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn new(t: &Tower, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            ln1: ln(t.hidden, t.eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(t, vb.pp("self_attn"))?,
            ln2: ln(t.hidden, t.eps, vb.pp("layer_norm2"))?,
            fc1: linear(t.hidden, t.intermediate, vb.pp("mlp.fc1"))?,
            fc2: linear(t.intermediate, t.hidden, vb.pp("mlp.fc2"))?,
            act: t.act,
        })
    }

    /// Pre-norm residual block: attention, then the MLP.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
        let h = self.act.apply(&self.fc1.forward(&self.ln2.forward(&x)?)?)?;
        &x + self.fc2.forward(&h)?
    }
}

#[derive(Debug)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    fn new(t: &Tower, vb: VarBuilder) -> candle_core::Result<Self> {
        let layers = (0..t.layers)
            .map(|i| EncoderLayer::new(t, vb.pp(format!("layers.{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask)?;
        }
        Ok(x)
    }
}

#[derive(Debug)]
struct TextTransformer {
    token_embedding: Tensor,    // (vocab, E)
    position_embedding: Tensor, // (positions, E)
    encoder: Encoder,
    final_layer_norm: LayerNorm,
}

impl TextTransformer {
    fn new(c: &TextConfig, t: &Tower, vb: VarBuilder) -> candle_core::Result<Self> {
        let emb = vb.pp("embeddings");
        Ok(Self {
            token_embedding: emb.get((c.vocab_size, t.hidden), "token_embedding.weight")?,
            position_embedding: emb.get(
                (c.max_position_embeddings, t.hidden),
                "position_embedding.weight",
            )?,
            encoder: Encoder::new(t, vb.pp("encoder"))?,
            final_layer_norm: ln(t.hidden, t.eps, vb.pp("final_layer_norm"))?,
        })
    }

    /// Hidden states at `pool[i]` of row `i`, after the final layer norm: (B, E).
    fn forward(&self, ids: &Tensor, pool: &[u32]) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let e = self.token_embedding.dim(1)?;
        let tokens = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, e))?;
        let x = tokens.broadcast_add(&self.position_embedding.narrow(0, 0, l)?)?;
        // Causal mask: each token sees itself and what precedes it. Padding
        // follows the end-of-text token, so the pooled position never sees it
        // and no separate padding mask is needed.
        let causal: Vec<f32> = (0..l)
            .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let causal = Tensor::from_vec(causal, (l, l), ids.device())?;
        let h = self.encoder.forward(&x, Some(&causal))?; // (B, L, E)
        let flat_index: Vec<u32> = pool
            .iter()
            .enumerate()
            .map(|(row, &p)| (row * l) as u32 + p)
            .collect();
        let flat_index = Tensor::new(flat_index.as_slice(), ids.device())?;
        let pooled = h.reshape((b * l, e))?.index_select(&flat_index, 0)?;
        self.final_layer_norm.forward(&pooled)
    }
}

#[derive(Debug)]
struct VisionTransformer {
    patch_weight: Tensor,       // (E, C * P * P): the patch convolution as a matrix
    class_embedding: Tensor,    // (E,)
    position_embedding: Tensor, // (1 + patches, E)
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    channels: usize,
    patch: usize,
    grid: usize,
}

impl VisionTransformer {
    fn new(c: &VisionConfig, t: &Tower, vb: VarBuilder) -> candle_core::Result<Self> {
        let emb = vb.pp("embeddings");
        let grid = c.image_size / c.patch_size;
        let patch_weight = emb
            .get(
                (t.hidden, c.num_channels, c.patch_size, c.patch_size),
                "patch_embedding.weight",
            )?
            .reshape((t.hidden, c.num_channels * c.patch_size * c.patch_size))?;
        Ok(Self {
            patch_weight,
            class_embedding: emb.get(t.hidden, "class_embedding")?,
            position_embedding: emb
                .get((grid * grid + 1, t.hidden), "position_embedding.weight")?,
            // "layrnorm" is how Hugging Face spells this weight.
            pre_layrnorm: ln(t.hidden, t.eps, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::new(t, vb.pp("encoder"))?,
            post_layernorm: ln(t.hidden, t.eps, vb.pp("post_layernorm"))?,
            channels: c.num_channels,
            patch: c.patch_size,
            grid,
        })
    }

    /// Pooled (class-token) output after the post layer norm: (B, E).
    fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let b = pixels.dim(0)?;
        let (c, p, g) = (self.channels, self.patch, self.grid);
        let e = self.class_embedding.dim(0)?;
        // A stride-P, kernel-P convolution is a matrix product over
        // non-overlapping patches flattened in (channel, row, column) order.
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let patch_emb = patches
            .matmul(&self.patch_weight.t()?)?
            .reshape((b, g * g, e))?;
        let cls = self.class_embedding.reshape((1, 1, e))?.repeat((b, 1, 1))?;
        let x = Tensor::cat(&[cls, patch_emb], 1)?.broadcast_add(&self.position_embedding)?;
        let x = self.pre_layrnorm.forward(&x)?;
        let h = self.encoder.forward(&x, None)?;
        let cls_out = h.narrow(1, 0, 1)?.squeeze(1)?;
        self.post_layernorm.forward(&cls_out)
    }
}

// ----------------------------------------------------------------- model

/// A frozen CLIP model: both towers, their projections and the tokenizer.
pub struct ClipModel {
    text: TextTransformer,
    vision: VisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    logit_scale: f32,
    tokenizer: Tokenizer,
    projection_dim: usize,
    image_size: usize,
    channels: usize,
    max_text_len: usize,
    eos_token_id: u32,
    mean: [f32; 3],
    std: [f32; 3],
    device: Device,
}

impl std::fmt::Debug for ClipModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipModel")
            .field("projection_dim", &self.projection_dim)
            .field("image_size", &self.image_size)
            .field("max_text_len", &self.max_text_len)
            .field("eos_token_id", &self.eos_token_id)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn required_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!("CLIP file {} is missing; {INSTALL_HINT}", path.display());
    }
    Ok(path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing JSON in {}", path.display()))
}

fn three(path: &Path, name: &str, v: Option<Vec<f32>>, default: [f32; 3]) -> Result<[f32; 3]> {
    match v {
        None => Ok(default),
        Some(v) => {
            let arr: [f32; 3] = v.as_slice().try_into().map_err(|_| {
                anyhow!(
                    "{}: {name} has {} values, expected 3",
                    path.display(),
                    v.len()
                )
            })?;
            if name == "image_std" && arr.iter().any(|s| *s <= 0.0) {
                bail!(
                    "{}: image_std must be positive, got {arr:?}",
                    path.display()
                );
            }
            Ok(arr)
        }
    }
}

impl ClipModel {
    /// Loads a CLIP directory in the Hugging Face layout (see the module
    /// docs) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            bail!("CLIP model directory {} does not exist", dir.display());
        }
        let config_path = required_file(dir, "config.json")?;
        let weights_path = required_file(dir, "model.safetensors")?;
        let tokenizer_path = required_file(dir, "tokenizer.json")?;

        let top: TopConfig = read_json(&config_path)?;
        let tc: TextConfig = sub_config(
            &config_path,
            "text_config",
            top.text_config,
            top.text_config_dict,
        )?;
        let vc: VisionConfig = sub_config(
            &config_path,
            "vision_config",
            top.vision_config,
            top.vision_config_dict,
        )?;
        check_heads(&config_path, "text", tc.hidden_size, tc.num_attention_heads)?;
        check_heads(
            &config_path,
            "vision",
            vc.hidden_size,
            vc.num_attention_heads,
        )?;
        if vc.image_size == 0 || !divides(vc.patch_size, vc.image_size) {
            bail!(
                "{}: image_size {} is not a positive multiple of patch_size {}",
                config_path.display(),
                vc.image_size,
                vc.patch_size
            );
        }
        if tc.max_position_embeddings < 2 || top.projection_dim == 0 {
            bail!(
                "{}: max_position_embeddings must be at least 2 and projection_dim positive",
                config_path.display()
            );
        }
        let text_tower = Tower {
            hidden: tc.hidden_size,
            intermediate: tc.intermediate_size,
            layers: tc.num_hidden_layers,
            heads: tc.num_attention_heads,
            eps: tc.layer_norm_eps,
            act: Activation::parse(&config_path, "text", &tc.hidden_act)?,
        };
        let vision_tower = Tower {
            hidden: vc.hidden_size,
            intermediate: vc.intermediate_size,
            layers: vc.num_hidden_layers,
            heads: vc.num_attention_heads,
            eps: vc.layer_norm_eps,
            act: Activation::parse(&config_path, "vision", &vc.hidden_act)?,
        };

        let (mean, std) = {
            let pre_path = dir.join("preprocessor_config.json");
            if pre_path.is_file() {
                let pre: PreprocessorConfig = read_json(&pre_path)?;
                let crop = match &pre.crop_size {
                    Some(Value::Number(n)) => n.as_u64(),
                    Some(Value::Object(o)) => o.get("height").and_then(Value::as_u64),
                    _ => None,
                };
                if let Some(crop) = crop {
                    if crop as usize != vc.image_size {
                        tracing::warn!(
                            "{}: crop_size {crop} differs from vision_config.image_size {}; using the latter",
                            pre_path.display(),
                            vc.image_size
                        );
                    }
                }
                (
                    three(&pre_path, "image_mean", pre.image_mean, CLIP_MEAN)?,
                    three(&pre_path, "image_std", pre.image_std, CLIP_STD)?,
                )
            } else {
                (CLIP_MEAN, CLIP_STD)
            }
        };

        let tokenizer = load_tokenizer(
            &tokenizer_path,
            tc.max_position_embeddings,
            tc.vocab_size,
            &config_path,
        )?;
        let vb = load_weights(&weights_path, device)?;
        let mismatch = || {
            format!(
                "weights in {} do not match {}",
                weights_path.display(),
                config_path.display()
            )
        };
        let text =
            TextTransformer::new(&tc, &text_tower, vb.pp("text_model")).with_context(mismatch)?;
        let vision = VisionTransformer::new(&vc, &vision_tower, vb.pp("vision_model"))
            .with_context(mismatch)?;
        let text_projection =
            linear_no_bias(tc.hidden_size, top.projection_dim, vb.pp("text_projection"))
                .with_context(mismatch)?;
        let visual_projection = linear_no_bias(
            vc.hidden_size,
            top.projection_dim,
            vb.pp("visual_projection"),
        )
        .with_context(mismatch)?;
        let logit_scale = if vb.contains_tensor("logit_scale") {
            vb.get((), "logit_scale")
                .and_then(|t| t.to_scalar::<f32>())
                .with_context(mismatch)?
        } else {
            top.logit_scale_init_value
        };

        Ok(Self {
            text,
            vision,
            text_projection,
            visual_projection,
            logit_scale,
            tokenizer,
            projection_dim: top.projection_dim,
            image_size: vc.image_size,
            channels: vc.num_channels,
            max_text_len: tc.max_position_embeddings,
            eos_token_id: tc.eos_token_id,
            mean,
            std,
            device: device.clone(),
        })
    }

    /// Length of an embedding: the shared projection dimension.
    pub fn dim(&self) -> usize {
        self.projection_dim
    }

    /// Side of the square images [`ClipModel::embed_images`] takes.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Per-channel (mean, std) on the 0..1 scale: feed `(pixel/255 - mean) / std`.
    pub fn pixel_mean_std(&self) -> ([f32; 3], [f32; 3]) {
        (self.mean, self.std)
    }

    /// Longest caption in tokens, start and end tokens included; longer
    /// captions are truncated.
    pub fn max_text_len(&self) -> usize {
        self.max_text_len
    }

    /// The learned temperature, `exp(logit_scale)`, that turns cosine
    /// similarities into logits.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale.exp()
    }

    /// Embeds normalised images `(N, C, S, S)` into `(N, dim)` unit rows.
    pub fn embed_images(&self, pixels: &Tensor) -> Result<Tensor> {
        let dims = pixels.dims();
        let s = self.image_size;
        if dims.len() != 4 || dims[1] != self.channels || dims[2] != s || dims[3] != s {
            bail!(
                "CLIP expects images of shape (N, {}, {s}, {s}), got {:?}",
                self.channels,
                dims
            );
        }
        let n = dims[0];
        if n == 0 {
            return Ok(Tensor::zeros(
                (0, self.projection_dim),
                DType::F32,
                &self.device,
            )?);
        }
        let pixels = pixels.to_device(&self.device)?.to_dtype(DType::F32)?;
        let mut pieces = Vec::with_capacity(n.div_ceil(IMAGE_BATCH));
        for start in (0..n).step_by(IMAGE_BATCH) {
            let len = IMAGE_BATCH.min(n - start);
            let chunk = pixels.narrow(0, start, len)?;
            let pooled = self.vision.forward(&chunk)?;
            pieces.push(l2_normalize(&self.visual_projection.forward(&pooled)?)?);
        }
        Ok(Tensor::cat(&pieces, 0)?)
    }

    /// Embeds captions into `(N, dim)` unit rows, in input order.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Tensor> {
        if texts.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.projection_dim),
                DType::F32,
                &self.device,
            )?);
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenizing {} captions: {e}", texts.len()))?;
        let pools = encodings
            .iter()
            .enumerate()
            .map(|(i, enc)| self.pool_position(enc.get_ids(), texts[i]))
            .collect::<Result<Vec<u32>>>()?;

        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut pieces = Vec::with_capacity(texts.len().div_ceil(TEXT_BATCH));
        for chunk in order.chunks(TEXT_BATCH) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            let pool: Vec<u32> = chunk.iter().map(|&i| pools[i]).collect();
            pieces.push(self.embed_text_batch(&batch, &pool)?);
        }
        let sorted = Tensor::cat(&pieces, 0)?;
        let mut position = vec![0u32; texts.len()];
        for (r, &i) in order.iter().enumerate() {
            position[i] = r as u32;
        }
        let position = Tensor::new(position.as_slice(), &self.device)?;
        Ok(sorted.index_select(&position, 0)?)
    }

    /// Which token's state represents the caption. Hugging Face's CLIP text
    /// model takes the first end-of-text token; configs from before
    /// `eos_token_id` was set carry the placeholder 2, and for those it takes
    /// the largest token id, which is end-of-text in the original vocabulary.
    fn pool_position(&self, ids: &[u32], text: &str) -> Result<u32> {
        if ids.is_empty() {
            bail!("the CLIP tokenizer produced no tokens for {text:?}");
        }
        let pos = if self.eos_token_id == 2 {
            // First occurrence of the maximum, as torch.argmax returns.
            let max = *ids.iter().max().unwrap_or(&0);
            ids.iter().position(|&t| t == max)
        } else {
            ids.iter().position(|&t| t == self.eos_token_id)
        };
        match pos {
            Some(p) => Ok(p as u32),
            None => bail!(
                "the CLIP tokenizer output for {text:?} has no end-of-text token (id {}); tokenizer.json's post-processor must append it",
                self.eos_token_id
            ),
        }
    }

    fn embed_text_batch(&self, batch: &[&Encoding], pool: &[u32]) -> Result<Tensor> {
        let n = batch.len();
        let longest = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(1);
        // Padding with id 0 is harmless: padded positions come after the
        // pooled token and the causal mask hides them from it.
        let mut ids = vec![0u32; n * longest];
        for (row, enc) in batch.iter().enumerate() {
            let t = enc.get_ids();
            ids[row * longest..row * longest + t.len()].copy_from_slice(t);
        }
        let ids = Tensor::from_vec(ids, (n, longest), &self.device)?;
        let pooled = self.text.forward(&ids, pool)?;
        l2_normalize(&self.text_projection.forward(&pooled)?)
    }
}
