//! The Memory Attention Module.
//!
//! For a query q (the frozen image embedding) and its k retrieved neighbours
//! (keys k_j, values v_j) — each standardised to zero mean and unit variance
//! per vector — each head h scores neighbour j as
//! `(W_q,h x) . (W_k,h k_j) / sqrt(e)` where x is the query in the hidden
//! space, turns the scores into attention weights with a softmax, and sums
//! `W_v,h v_j` under those weights. With `include_query` the query itself is
//! one more attended item, so the module can fall back on it when the
//! neighbours are useless. The heads' outputs are projected, added to x
//! (residual) and layer-normalised; a linear layer classifies the result.
//! With `fusion`, a query-only linear branch is trained alongside and the two
//! softmax distributions are averaged (RAC-style); with `fusion_gate` the
//! average is weighted per query by a learned gate on the module's output,
//! so a query whose neighbours mislead can lean on the query-only branch.
//!
//! With `combine = values` the classifier instead reads
//! `[q ; sum_j a_j v_j ; mean_j v_j]`, the query, the attention-weighted
//! neighbour values and their plain average, as the L2-normalised embeddings
//! the baselines read (no value projection, no residual; only the attention
//! scores use standardised vectors), and the query projection starts at
//! zero: training starts from the uniform-mean baseline. `attention_prior` adds a
//! KL(uniform || attention) penalty to the training loss, a pull back
//! towards plain averaging.
//!
//! The computation is reassociated so that nothing of size k x hidden is ever
//! formed: the query is mapped back into key space once per head
//! (`u_h = W_k,h^T W_q,h x`, so scores are `u_h . k_j`), and the values are
//! averaged before they are projected (`W_v,h sum_j a_hj v_j`). The function
//! and its parameters are those of ordinary multi-head cross-attention
//! (without a key bias, which cancels in the softmax); the cost per query
//! drops from O(k d hidden) to O(heads k d + d hidden).

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::classifier::{add_bias, log_softmax_biased, Classifier, Output, PartRate};
use crate::error::{ModelError, Result};
use crate::ops::{linear_on_input, matmul_frozen, Frozen};
use crate::samples::{Batch, NeighbourUse};
use crate::vars::{seeded_init, zero_var};
use crate::vote::VoteSetting;

/// How the attention output is joined to the query before the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    /// `LayerNorm(x + attention)`.
    Residual,
    /// The classifier sees `[x ; attention]`.
    Concat,
    /// The classifier sees `[q ; sum_j a_j v_j ; mean_j v_j]`: the query,
    /// the attention-weighted neighbour values (`a_j` the heads' mean
    /// weight) and their plain average, all L2-normalised embeddings as the
    /// uniform-mean baseline reads them, unprojected. The attention's query
    /// projection starts at zero, so training starts from uniform averaging
    /// (the RAC-like baseline) and learns how far to move away from it; the
    /// average stays available to the classifier wherever attending does
    /// not pay.
    Values,
}

impl Combine {
    pub fn name(self) -> &'static str {
        match self {
            Combine::Residual => "residual",
            Combine::Concat => "concat",
            Combine::Values => "values",
        }
    }
}

/// Shape and options of a [`MemoryAttention`] module. Every field but the
/// three dimensions is an option with a default ([`MamConfig::default`]),
/// so a study file's `[mam]` table reads straight into it; the dimensions
/// come from the data ([`MamConfig::with_dims`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MamConfig {
    /// Query and key dimension (the image encoder's embedding size).
    pub input_dim: usize,
    /// Value dimension (image, text, or both concatenated).
    pub value_dim: usize,
    pub classes: usize,
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub dropout: f32,
    /// Attend over `[q; neighbours]` instead of the neighbours alone.
    pub include_query: bool,
    /// Average the softmax with that of a query-only linear branch.
    pub fusion: bool,
    pub combine: Combine,
    /// A feed-forward block (hidden -> 2 hidden -> hidden) after each attention layer.
    pub feed_forward: bool,
    /// Mix each head's attention over the neighbours with uniform weights
    /// through a learned gate (sigmoid, starting at one half): the module can
    /// fall back on plain averaging where attending does not pay.
    #[serde(default)]
    pub uniform_mix: bool,
    /// Add each neighbour's retrieval similarity to its attention score,
    /// under a learned per-head scale that starts at zero.
    #[serde(default)]
    pub similarity: bool,
    /// Weight of a training penalty, KL(uniform || attention) over each
    /// head's neighbour weights: 0 leaves attention free; larger values keep
    /// it closer to plain averaging unless the data pays for moving away.
    #[serde(default)]
    pub attention_prior: f32,
    /// With `fusion`: weight the two distributions per query by
    /// `g = sigmoid(w . x + b)` read from the classifier's input x (attention
    /// branch weight g, query branch 1 - g), w and b starting at zero, i.e.
    /// at the plain average. Left out of the serialised form when off, so
    /// configurations (and checkpoints) written before it read the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fusion_gate: bool,
    /// With `fusion` (and no gate): the weight of the attention branch in
    /// the average, the query-only branch taking the rest (default one
    /// half). Left out of the serialised form at its default.
    #[serde(skip_serializing_if = "is_half_weight")]
    pub fusion_weight: f32,
    /// Learning rate of the final linear classifier (the variables under
    /// `classifier`), following the training schedule; `None`: the
    /// training's `learning_rate`. Lets the classifier train at the rate of
    /// the linear heads while the attention keeps a smaller one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier_learning_rate: Option<f64>,
    /// Learning rate of the query-only branch (`fusion`; the variables
    /// under `query_branch`), following the training schedule; `None`: the
    /// training's `learning_rate`. That branch is a linear probe on the
    /// query, so it can train at the linear heads' rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_branch_learning_rate: Option<f64>,
    /// Mix the module's class distribution with a similarity-weighted vote
    /// of its neighbours' memory labels ([`crate::vote`]): off, `auto`
    /// (chosen on validation after training) or fixed. The module trains
    /// alone; the vote is mixed into its predictions by whoever holds the
    /// neighbours' labels ([`crate::vote::fuse`]). Left out of the
    /// serialised form when off.
    #[serde(skip_serializing_if = "VoteSetting::is_off")]
    pub vote: VoteSetting,
}

impl Default for MamConfig {
    /// The options' defaults, with every dimension 0 (to be set by
    /// [`MamConfig::with_dims`]).
    fn default() -> MamConfig {
        MamConfig::new(0, 0, 0)
    }
}

fn is_half_weight(w: &f32) -> bool {
    *w == 0.5
}

impl MamConfig {
    /// The defaults: 8 heads at hidden 512, one layer, query included,
    /// residual combination, dropout 0.3, no fusion, no uniform mix (the
    /// choices that scored best on the Fashion-MNIST-LT validation split;
    /// docs/RESULTS.md).
    pub fn new(input_dim: usize, value_dim: usize, classes: usize) -> MamConfig {
        MamConfig {
            input_dim,
            value_dim,
            classes,
            hidden: 512,
            heads: 8,
            layers: 1,
            dropout: 0.3,
            include_query: true,
            fusion: false,
            combine: Combine::Residual,
            feed_forward: false,
            uniform_mix: false,
            similarity: false,
            attention_prior: 0.0,
            fusion_gate: false,
            fusion_weight: 0.5,
            classifier_learning_rate: None,
            query_branch_learning_rate: None,
            vote: VoteSetting::Off,
        }
    }

    /// The same options for a module of these dimensions.
    pub fn with_dims(&self, input_dim: usize, value_dim: usize, classes: usize) -> MamConfig {
        MamConfig {
            input_dim,
            value_dim,
            classes,
            ..self.clone()
        }
    }

    /// Checks the options, naming the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.input_dim == 0 || self.value_dim == 0 || self.classes == 0 {
            return bad("input_dim, value_dim and classes must be positive".into());
        }
        if self.heads == 0 || self.hidden == 0 || !self.hidden.is_multiple_of(self.heads) {
            return bad(format!(
                "hidden ({}) must be a positive multiple of heads ({})",
                self.hidden, self.heads
            ));
        }
        if self.layers == 0 {
            return bad("layers must be at least 1".into());
        }
        if self.combine != Combine::Residual && (self.layers != 1 || self.feed_forward) {
            return bad(format!(
                "combine = {} takes one layer and no feed-forward block",
                self.combine.name()
            ));
        }
        if self.combine == Combine::Values && self.include_query {
            return bad(
                "combine = values attends over the neighbours only (the classifier \
                 reads the query directly): set include_query = false"
                    .into(),
            );
        }
        if !(self.attention_prior >= 0.0 && self.attention_prior.is_finite()) {
            return bad(format!(
                "attention_prior {} must be a finite number >= 0",
                self.attention_prior
            ));
        }
        if self.fusion_gate && !self.fusion {
            return bad("fusion_gate weights the fusion's two branches: set fusion = true".into());
        }
        if !(self.fusion_weight > 0.0 && self.fusion_weight < 1.0) {
            return bad(format!(
                "fusion_weight {} is not in (0, 1)",
                self.fusion_weight
            ));
        }
        if self.fusion_weight != 0.5 && (!self.fusion || self.fusion_gate) {
            return bad(
                "fusion_weight is the fixed weight of the fusion's attention branch: it needs \
                 fusion = true and no fusion_gate (which learns the weight per query)"
                    .into(),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        for (name, rate) in [
            ("classifier_learning_rate", self.classifier_learning_rate),
            (
                "query_branch_learning_rate",
                self.query_branch_learning_rate,
            ),
        ] {
            if let Some(rate) = rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
                return bad(format!("{name} {rate} must be a finite number > 0"));
            }
        }
        if self.query_branch_learning_rate.is_some() && !self.fusion {
            return bad(
                "query_branch_learning_rate is the rate of the query-only branch, which only \
                 fusion = true adds"
                    .into(),
            );
        }
        Ok(())
    }
}

pub(crate) struct LayerNormParams {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl LayerNormParams {
    fn new(dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(LayerNormParams {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // The composed form: it has a backward pass (the fused op has none).
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, 1e-5)
    }
}

pub(crate) struct AttentionLayer {
    pub(crate) w_q: Linear,
    /// `(hidden, input_dim)`: the key projection.
    pub(crate) w_k: Tensor,
    /// `(heads,)`: logit of the attention share of each head (with `uniform_mix`).
    uniform_gate: Option<Tensor>,
    /// `(heads,)`: scale of the retrieval similarity in each head's scores
    /// (with `similarity`).
    similarity_scale: Option<Tensor>,
    /// The projection of the pooled values back into the hidden space;
    /// absent with `combine = values`, where the classifier reads the pooled
    /// values themselves.
    pub(crate) projection: Option<ValueProjection>,
}

pub(crate) struct ValueProjection {
    /// `(hidden, value_dim)` and `(hidden,)`: the value projection.
    pub(crate) w_v: Tensor,
    pub(crate) b_v: Tensor,
    /// Value projection of the query item (only with `include_query`).
    pub(crate) w_vq: Option<Linear>,
    pub(crate) w_o: Linear,
    pub(crate) norm: LayerNormParams,
    pub(crate) feed_forward: Option<(Linear, Linear, LayerNormParams)>,
}

/// The memory attention module with its classifier (and optional
/// query-only branch).
pub struct MemoryAttention {
    pub(crate) config: MamConfig,
    pub(crate) input: Linear,
    pub(crate) layers: Vec<AttentionLayer>,
    pub(crate) classifier: Linear,
    pub(crate) query_branch: Option<Linear>,
    /// `(1, classifier input)`: the per-query weight of the attention branch
    /// in the fusion (with `fusion_gate`).
    pub(crate) fusion_gate: Option<Linear>,
    /// Dropout masks; reseeded by `initialise`.
    pub(crate) dropout_rng: std::sync::Mutex<crate::rng::SplitMix64>,
    /// The native training step's large buffers, kept between steps.
    pub(crate) native_buffers: crate::native::BufferPool,
}

impl MemoryAttention {
    /// The module over the variables of `vb`: a fresh one from
    /// [`crate::vars::new_vars`] (to be initialised by training), or saved
    /// weights read by tensor name (`VarBuilder::from_mmaped_safetensors`).
    pub fn new(config: MamConfig, vb: VarBuilder) -> Result<MemoryAttention> {
        config.validate()?;
        let c = &config;
        let input = linear(c.input_dim, c.hidden, vb.pp("input"))?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let vb = vb.pp(format!("layer{l}"));
            let init_k = candle_nn::init::DEFAULT_KAIMING_NORMAL;
            let bound = 1.0 / (c.value_dim as f64).sqrt();
            let projection = if c.combine == Combine::Values {
                None
            } else {
                Some(ValueProjection {
                    w_v: vb.get_with_hints(
                        (c.hidden, c.value_dim),
                        "w_v.weight",
                        candle_nn::Init::Uniform {
                            lo: -bound,
                            up: bound,
                        },
                    )?,
                    b_v: vb.get_with_hints(c.hidden, "w_v.bias", candle_nn::Init::Const(0.0))?,
                    w_vq: if c.include_query {
                        Some(linear_no_bias(c.input_dim, c.hidden, vb.pp("w_vq"))?)
                    } else {
                        None
                    },
                    w_o: linear(c.hidden, c.hidden, vb.pp("w_o"))?,
                    norm: LayerNormParams::new(c.hidden, vb.pp("norm"))?,
                    feed_forward: if c.feed_forward {
                        Some((
                            linear(c.hidden, 2 * c.hidden, vb.pp("ff1"))?,
                            linear(2 * c.hidden, c.hidden, vb.pp("ff2"))?,
                            LayerNormParams::new(c.hidden, vb.pp("ff_norm"))?,
                        ))
                    } else {
                        None
                    },
                })
            };
            let w_q = if c.combine == Combine::Values {
                // Zero: every score starts equal, i.e. uniform averaging.
                let zero = candle_nn::Init::Const(0.0);
                Linear::new(
                    vb.get_with_hints((c.hidden, c.hidden), "w_q.weight", zero)?,
                    Some(vb.get_with_hints(c.hidden, "w_q.bias", zero)?),
                )
            } else {
                linear(c.hidden, c.hidden, vb.pp("w_q"))?
            };
            let per_head =
                |name: &str| vb.get_with_hints(c.heads, name, candle_nn::Init::Const(0.0));
            layers.push(AttentionLayer {
                w_q,
                w_k: vb.get_with_hints((c.hidden, c.input_dim), "w_k.weight", init_k)?,
                uniform_gate: if c.uniform_mix {
                    Some(per_head("uniform_gate.bias")?)
                } else {
                    None
                },
                similarity_scale: if c.similarity {
                    Some(per_head("similarity_scale")?)
                } else {
                    None
                },
                projection,
            });
        }
        let classifier_in = match c.combine {
            Combine::Residual => c.hidden,
            Combine::Concat => 2 * c.hidden,
            Combine::Values => c.input_dim + 2 * c.value_dim,
        };
        let classifier = linear(classifier_in, c.classes, vb.pp("classifier"))?;
        let query_branch = if c.fusion {
            Some(linear(c.input_dim, c.classes, vb.pp("query_branch"))?)
        } else {
            None
        };
        let fusion_gate = if c.fusion_gate {
            Some(linear(classifier_in, 1, vb.pp("fusion_gate"))?)
        } else {
            None
        };
        Ok(MemoryAttention {
            config,
            input,
            layers,
            classifier,
            query_branch,
            fusion_gate,
            dropout_rng: std::sync::Mutex::new(crate::rng::SplitMix64::new(0)),
            native_buffers: Default::default(),
        })
    }

    pub fn config(&self) -> &MamConfig {
        &self.config
    }

    /// Each head's attention weights over the attended items for hidden
    /// state `x` (B, hidden): (B, H, items), items = `[q;] neighbours`.
    #[allow(clippy::too_many_arguments)] // the tensors of one attention step
    fn attention_weights(
        &self,
        layer: &AttentionLayer,
        x: &Tensor,
        q: &Tensor,
        keys: &StandardizedRows,
        similarity: Option<&Tensor>,
        mask_bias: &Tensor,
        uniform: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, _) = x.dims2()?;
        let (h, e) = (c.heads, c.hidden / c.heads);
        // (H, B, e) x (H, e, d) -> (H, B, d) -> (B, H, d): the per-head query in key space.
        let qh = layer
            .w_q
            .forward(x)?
            .reshape((b, h, e))?
            .transpose(0, 1)?
            .contiguous()?;
        let wk = layer.w_k.reshape((h, e, c.input_dim))?;
        let u = qh.matmul(&wk)?.transpose(0, 1)?.contiguous()?;
        // (B, H, d) x (B, d, k) -> (B, H, k).
        let mut scores = dot_standardized(&u, keys)?;
        if c.include_query {
            let self_score = u.broadcast_mul(&q.unsqueeze(1)?)?.sum_keepdim(D::Minus1)?;
            scores = Tensor::cat(&[&self_score, &scores], D::Minus1)?;
        }
        let mut scores = (scores * (1.0 / (e as f64).sqrt()))?;
        if let (Some(scale), Some(similarity)) = (&layer.similarity_scale, similarity) {
            let scale = (scale * SIMILARITY_GAIN)?.reshape((1, h, 1))?;
            scores = scores.broadcast_add(&similarity.broadcast_mul(&scale)?)?;
        }
        let mut weights = candle_nn::ops::softmax(&scores.broadcast_add(mask_bias)?, D::Minus1)?;
        let k = keys.rows.dim(2)?;
        if let Some(gate) = &layer.uniform_gate {
            // w = g * attention + (1 - g) * uniform over the present neighbours.
            let g = candle_nn::ops::sigmoid(gate)?.reshape((1, h, 1))?;
            let mixed_neighbours = (weights
                .narrow(D::Minus1, weights.dim(D::Minus1)? - k, k)?
                .broadcast_mul(&g)?
                + uniform.broadcast_mul(&(1.0 - &g)?)?)?;
            weights = if c.include_query {
                let self_weight = weights.narrow(D::Minus1, 0, 1)?.broadcast_mul(&g)?;
                Tensor::cat(&[&self_weight, &mixed_neighbours], D::Minus1)?
            } else {
                mixed_neighbours
            };
        }
        Ok(weights)
    }

    /// The attended output (B, hidden) of `projection` under the (dropped
    /// out) attention weights `attn` (B, H, items).
    fn project_values(
        &self,
        projection: &ValueProjection,
        attn: &Tensor,
        q: &Tensor,
        values: &StandardizedRows,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, h, _) = attn.dims3()?;
        let e = c.hidden / h;
        let k = values.rows.dim(1)?;
        let neighbour_attn = if c.include_query {
            attn.narrow(D::Minus1, 1, k)?
        } else {
            attn.clone()
        };
        // (B, H, k) x (B, k, dv) -> (B, H, dv) -> (H, B, dv) x (H, dv, e) -> (B, H, e).
        let pooled = mix_standardized(&neighbour_attn, values)?
            .transpose(0, 1)?
            .contiguous()?;
        let wv = projection
            .w_v
            .reshape((h, e, c.value_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let mut out = pooled.matmul(&wv)?.transpose(0, 1)?; // (B, H, e)
        if let Some(w_vq) = &projection.w_vq {
            let self_attn = attn.narrow(D::Minus1, 0, 1)?; // (B, H, 1)
            let self_value = linear_on_input(w_vq, q)?.reshape((b, h, e))?;
            out = (out + self_value.broadcast_mul(&self_attn)?)?;
        }
        let out = out.reshape((b, c.hidden))?.broadcast_add(&projection.b_v)?;
        projection.w_o.forward(&out)
    }
}

/// Multiplies the learned similarity scale, so that the few hundred steps
/// of a small data set move a neighbour's similarity term by whole logits
/// (neighbour similarities differ by a few hundredths).
const SIMILARITY_GAIN: f64 = 20.0;

/// Mean over queries and heads of KL(uniform || attention) over the present
/// neighbours: `weights` (B, H, items), the neighbours last; `uniform`
/// (B, 1, k), zero for absent neighbours.
fn kl_from_uniform(weights: &Tensor, uniform: &Tensor) -> candle_core::Result<Tensor> {
    let k = uniform.dim(D::Minus1)?;
    let items = weights.dim(D::Minus1)?;
    let neighbours = weights.narrow(D::Minus1, items - k, k)?;
    // Attention that sits on the query item leaves less for the neighbours:
    // renormalised, so the prior constrains how the neighbours share theirs.
    let share = neighbours.sum_keepdim(D::Minus1)?;
    let neighbours = neighbours.broadcast_div(&(share + 1e-12)?)?;
    let log_ratio = (uniform + 1e-12)?
        .log()?
        .broadcast_sub(&(neighbours + 1e-12)?.log()?)?;
    log_ratio.broadcast_mul(uniform)?.sum(D::Minus1)?.mean_all()
}

/// L2-normalised neighbour rows with the moments that standardise them:
/// the standardised row j is `(row_j - mean_j) * inv_std_j`.
struct StandardizedRows {
    /// `(B, d, k)` for keys (transposed), `(B, k, d)` for values.
    rows: Tensor,
    /// `(B, 1, k)`.
    mean: Tensor,
    /// `(B, 1, k)`.
    inv_std: Tensor,
}

impl StandardizedRows {
    fn new(rows: Tensor, moments: &(Tensor, Tensor)) -> candle_core::Result<Self> {
        Ok(StandardizedRows {
            rows,
            mean: moments.0.unsqueeze(1)?,
            inv_std: moments.1.unsqueeze(1)?,
        })
    }
}

/// `x_m . standardised(row_j)` for every m and j: `x` (B, m, d), keys
/// (B, d, k) -> (B, m, k). Since `x . (r - mu 1) s = (x . r - mu sum(x)) s`,
/// the bank needs no standardised copy of its rows.
fn dot_standardized(x: &Tensor, keys: &StandardizedRows) -> candle_core::Result<Tensor> {
    let raw = matmul_frozen(x, &keys.rows, Frozen::Rhs)?;
    let x_sum = x.sum_keepdim(D::Minus1)?; // (B, m, 1)
    raw.broadcast_sub(&x_sum.broadcast_mul(&keys.mean)?)?
        .broadcast_mul(&keys.inv_std)
}

/// `sum_j w_mj standardised(row_j)`: weights (B, m, k), values (B, k, d) ->
/// (B, m, d), as `sum_j (w_mj s_j) r_j - sum_j w_mj s_j mu_j`.
fn mix_standardized(weights: &Tensor, values: &StandardizedRows) -> candle_core::Result<Tensor> {
    let scaled = weights.broadcast_mul(&values.inv_std)?;
    let shift = scaled.broadcast_mul(&values.mean)?.sum_keepdim(D::Minus1)?; // (B, m, 1)
    matmul_frozen(&scaled, &values.rows, Frozen::Rhs)?.broadcast_sub(&shift)
}

/// Each vector (last dimension) shifted to zero mean and scaled to unit
/// variance; no learned parameters, so it can be applied to data without
/// entering the backward pass.
fn standardize(x: &Tensor) -> candle_core::Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + 1e-5)?.sqrt()?)
}

impl MemoryAttention {
    /// Inverted dropout with masks drawn from the module's seeded generator,
    /// so a training run is a function of its seed.
    fn dropout(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train {
            return Ok(x.clone());
        }
        match self.dropout_mask(x.elem_count()) {
            None => Ok(x.clone()),
            Some(mask) => x * Tensor::from_vec(mask, x.shape(), x.device())?,
        }
    }

    /// The next `count` inverted-dropout multipliers (0 or `1 / (1 - p)`),
    /// or `None` without dropout. The autograd and the native step draw
    /// their masks here, in the same order, so one seed gives both the same
    /// run.
    pub(crate) fn dropout_mask(&self, count: usize) -> Option<Vec<f32>> {
        let p = self.config.dropout;
        if p <= 0.0 {
            return None;
        }
        let keep = 1.0 / (1.0 - p);
        let mut rng = self.dropout_rng.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            (0..count)
                .map(|_| {
                    let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
                    if u < p {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect(),
        )
    }
}

impl Classifier for MemoryAttention {
    fn name(&self) -> &str {
        "mam"
    }

    fn neighbour_use(&self) -> NeighbourUse {
        NeighbourUse::Rows
    }

    fn initialise(&self, vars: &VarMap, seed: u64) -> candle_core::Result<()> {
        *self.dropout_rng.lock().unwrap_or_else(|e| e.into_inner()) =
            crate::rng::SplitMix64::new(seed ^ 0x0D80_F0A7);
        seeded_init(vars, seed)?;
        if self.config.combine == Combine::Values {
            // Zero query projection: the training starts from uniform averaging.
            for layer in &self.layers {
                zero_var(vars, layer.w_q.weight())?;
                if let Some(bias) = layer.w_q.bias() {
                    zero_var(vars, bias)?;
                }
            }
        }
        if let Some(gate) = &self.fusion_gate {
            // Zero: the gate starts at one half, the plain average.
            zero_var(vars, gate.weight())?;
            if let Some(bias) = gate.bias() {
                zero_var(vars, bias)?;
            }
        }
        Ok(())
    }

    fn part_learning_rates(&self) -> Vec<PartRate> {
        [
            (
                "classifier_learning_rate",
                "classifier",
                self.config.classifier_learning_rate,
            ),
            (
                "query_branch_learning_rate",
                "query_branch",
                self.config.query_branch_learning_rate,
            ),
        ]
        .into_iter()
        .filter_map(|(option, prefix, rate)| {
            Some(PartRate {
                option,
                prefix,
                rate: rate?,
            })
        })
        .collect()
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn native_step(&self) -> Option<&dyn crate::native::NativeStep> {
        self.native_step_supported()
            .then_some(self as &dyn crate::native::NativeStep)
    }

    fn forward(
        &self,
        batch: &Batch,
        train: bool,
        logit_bias: Option<&Tensor>,
    ) -> candle_core::Result<Output> {
        let c = &self.config;
        let q = &batch.queries;
        let n = batch.neighbours.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("the memory attention module needs neighbours".into())
        })?;
        // Embeddings are unit vectors whose entries are ~1/sqrt(d) and
        // mostly positive (post-ReLU pooling): standardised to zero mean and
        // unit variance per vector, as a transformer's layer norm would, the
        // attention scores start in a range where they can learn instead of
        // sitting at uniform.
        let q = &standardize(q)?;
        let (Some(keys), Some(values), Some(moments)) = (&n.keys, &n.values, &n.moments) else {
            return Err(candle_core::Error::Msg(
                "the memory attention module needs the neighbours' key and value rows".into(),
            ));
        };
        // The bank holds L2-normalised rows; the attention reads them
        // standardised through their moments (see `dot_standardized`).
        let keys = StandardizedRows::new(keys.transpose(1, 2)?, &moments.keys)?;
        let values = StandardizedRows::new(values.clone(), &moments.values)?;
        // Empty slots get -1e9 before the softmax; the query item is always present.
        let mut mask = ((n.valid.clone() - 1.0)? * 1e9)?;
        if c.include_query {
            let zero = Tensor::zeros((mask.dim(0)?, 1), DType::F32, mask.device())?;
            mask = Tensor::cat(&[&zero, &mask], 1)?;
        }
        let mask_bias = mask.unsqueeze(1)?;
        let count = n.valid.sum_keepdim(D::Minus1)?.clamp(1.0, f64::MAX)?;
        // (B, 1, k): 1/count on the present neighbours.
        let uniform = n.valid.broadcast_div(&count)?.unsqueeze(1)?;
        // Retrieval similarity of each item: the correlation of the
        // standardised vectors (the query's own is 1).
        let similarity = if c.similarity {
            let d = q.dim(1)? as f64;
            let s = (dot_standardized(&q.unsqueeze(1)?, &keys)? / d)?;
            Some(if c.include_query {
                let one = Tensor::ones((s.dim(0)?, 1, 1), DType::F32, s.device())?;
                Tensor::cat(&[&one, &s], D::Minus1)?
            } else {
                s
            })
        } else {
            None
        };
        let mut x = linear_on_input(&self.input, q)?;
        let mut weights = None;
        let mut penalty = None;
        for layer in &self.layers {
            let w = self.attention_weights(
                layer,
                &x,
                q,
                &keys,
                similarity.as_ref(),
                &mask_bias,
                &uniform,
            )?;
            let attn = self.dropout(&w, train)?;
            x = match &layer.projection {
                // combine = values: [q ; sum_j a_j v_j ; mean_j v_j] of the
                // L2-normalised embeddings, a_j the heads' mean weights.
                None => {
                    let mean_weights = attn.mean_keepdim(1)?; // (B, 1, k)
                    let attended =
                        matmul_frozen(&mean_weights, &values.rows, Frozen::Rhs)?.squeeze(1)?;
                    Tensor::cat(&[&batch.queries, &attended, &n.mean_values], 1)?
                }
                Some(projection) => {
                    let attended = self.project_values(projection, &attn, q, &values)?;
                    let attended = self.dropout(&attended, train)?;
                    let mut x = match c.combine {
                        Combine::Concat => Tensor::cat(&[&x, &attended], 1)?,
                        _ => projection.norm.forward(&(x + attended)?)?,
                    };
                    if let Some((ff1, ff2, ff_norm)) = &projection.feed_forward {
                        let hidden = ff1.forward(&x)?.gelu()?;
                        let hidden = self.dropout(&ff2.forward(&hidden)?, train)?;
                        x = ff_norm.forward(&(x + hidden)?)?;
                    }
                    x
                }
            };
            if train && c.attention_prior > 0.0 {
                let term = kl_from_uniform(&w, &uniform)?;
                penalty = Some(match penalty {
                    None => term,
                    Some(p) => (p + term)?,
                });
            }
            weights = Some(w);
        }
        let penalty = match penalty {
            Some(p) => Some((p * c.attention_prior as f64)?),
            None => None,
        };
        let logits = self.classifier.forward(&x)?;
        let log_probs = match &self.query_branch {
            None => log_softmax_biased(&logits, logit_bias)?,
            Some(branch) => {
                let query_logits = linear_on_input(branch, q)?;
                let p1 = candle_nn::ops::softmax(&add_bias(&logits, logit_bias)?, D::Minus1)?;
                let p2 = candle_nn::ops::softmax(&add_bias(&query_logits, logit_bias)?, D::Minus1)?;
                let w = c.fusion_weight as f64;
                let mixed = match &self.fusion_gate {
                    None => ((p1 * w)? + (p2 * (1.0 - w))?)?,
                    Some(gate) => {
                        let g = candle_nn::ops::sigmoid(&gate.forward(&x)?)?; // (B, 1)
                        (p1.broadcast_mul(&g)? + p2.broadcast_mul(&(1.0 - &g)?)?)?
                    }
                };
                (mixed + 1e-12)?.log()?
            }
        };
        // Mean over heads: one weight per attended item.
        let attention = match weights {
            Some(w) => Some(w.mean(1)?),
            None => None,
        };
        Ok(Output {
            log_probs,
            attention,
            penalty,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::max_abs_diff;
    use candle_core::Device;

    /// The fusion options at their defaults leave the serialised config as
    /// it was before they existed (checkpoints written then still resume);
    /// out-of-range weights are refused by name.
    #[test]
    fn fusion_options_serialise_only_when_set_and_are_checked() {
        let mut config = MamConfig::new(8, 8, 3);
        config.fusion = true;
        let json = serde_json::to_value(&config).unwrap();
        assert!(json.get("fusion_gate").is_none() && json.get("fusion_weight").is_none());
        let back: MamConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);
        config.fusion_weight = 0.3;
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["fusion_weight"], serde_json::json!(0.3f32));
        config.validate().unwrap();
        for bad in [0.0, 1.0, f32::NAN] {
            config.fusion_weight = bad;
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("fusion_weight"), "{err}");
        }
        config.fusion_weight = 0.3;
        config.fusion_gate = true;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("fusion_gate"), "{err}");
    }

    #[test]
    fn standardised_products_from_row_moments_match_standardised_rows() {
        let dev = Device::Cpu;
        let (b, m, k, d) = (2, 3, 4, 16);
        let rows = Tensor::rand(0f32, 1.0, (b, k, d), &dev).unwrap();
        let flat: Vec<f32> = rows.flatten_all().unwrap().to_vec1().unwrap();
        let moments = crate::bank::row_moments(&flat, d);
        let mean: Vec<f32> = moments.iter().map(|m| m.mean).collect();
        let inv_std: Vec<f32> = moments.iter().map(|m| m.inv_std).collect();
        let moments = (
            Tensor::from_vec(mean, (b, k), &dev).unwrap(),
            Tensor::from_vec(inv_std, (b, k), &dev).unwrap(),
        );
        let explicit = standardize(&rows).unwrap();
        let x = Tensor::randn(0f32, 1.0, (b, m, d), &dev).unwrap();
        let keys = StandardizedRows::new(rows.transpose(1, 2).unwrap(), &moments).unwrap();
        let expected = x.matmul(&explicit.transpose(1, 2).unwrap()).unwrap();
        assert!(max_abs_diff(&dot_standardized(&x, &keys).unwrap(), &expected) < 1e-4);

        let w = Tensor::rand(0f32, 1.0, (b, m, k), &dev).unwrap();
        let values = StandardizedRows::new(rows.clone(), &moments).unwrap();
        let expected = w.matmul(&explicit).unwrap();
        assert!(max_abs_diff(&mix_standardized(&w, &values).unwrap(), &expected) < 1e-4);
    }
}
