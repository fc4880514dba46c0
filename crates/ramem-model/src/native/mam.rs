//! The memory attention module's training step, forward and backward by
//! hand (the function is the one [`crate::mam`] describes; the tests hold the
//! two equal).
//!
//! Shapes: B queries, d key (input) dimension, dv value dimension, k
//! neighbours, H heads of e dimensions (hidden N = H e), C classes; items =
//! k, plus one with `include_query` (the query first). Every buffer is
//! row-major. Per head, a product reads its operands through strides: the
//! head's columns of `(B, N)` activations and its rows of the `(N, d)`
//! weights, with no reshaped copies; the heads' products run one head per
//! thread, each writing its own head-major `(H, B, .)` block. Work that is
//! per query (its neighbours' scores, the softmax, the pooled values and
//! their backward passes) runs in parallel over queries, reading the
//! neighbours' rows where they are (the bank, or a gathered batch).

// The loops below index several row-major buffers with the same (query,
// head, item) arithmetic; iterators over one of them would hide that.
#![allow(clippy::needless_range_loop)]

use gemm::Parallelism;
use rayon::prelude::*;

use super::{
    column_sums, cross_entropy_backward, dot, kernels, matmul, per_head_products, threads,
    BufferPool, NativeStep, NeighbourRows, Objective, Reader, StepGradients, View,
};
use crate::bank::NeighbourBank;
use crate::mam::{Combine, MemoryAttention};
use crate::samples::Batch;

/// Added to the fused probabilities before the logarithm, as the autograd
/// path does.
const FUSION_FLOOR: f32 = 1e-12;
/// The layer norm's and the query standardisation's epsilon.
const NORM_EPS: f32 = 1e-5;

impl MemoryAttention {
    /// Whether [`NativeStep`] covers this module's options: one attention
    /// layer without a feed-forward block, uniform mix or similarity term,
    /// combined by `residual` or `values`, on the CPU. Other options train
    /// through autograd.
    pub(crate) fn native_step_supported(&self) -> bool {
        let c = &self.config;
        c.layers == 1
            && !c.feed_forward
            && !c.uniform_mix
            && !c.similarity
            && c.combine != Combine::Concat
            && self.input.weight().device().is_cpu()
    }
}

fn bias_of(linear: &candle_nn::Linear) -> candle_core::Result<&candle_core::Tensor> {
    linear
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("native step: a linear layer without bias".into()))
}

/// `input (rows, in) * w^T + bias` for `w (out, in)`.
fn linear_forward(
    input: &[f32],
    in_dim: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    out_dim: usize,
    par: Parallelism,
) -> Vec<f32> {
    let rows = input.len() / in_dim;
    let mut out = vec![0.0f32; rows * out_dim];
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(out_dim) {
            row.copy_from_slice(bias);
        }
    }
    matmul(
        rows,
        out_dim,
        in_dim,
        &mut out,
        0,
        out_dim,
        bias.is_some(),
        View::rows(input, in_dim),
        View::rows(w, in_dim).t(),
        par,
    );
    out
}

/// `into (+)= grad * w` for `w (out, in)`: the gradient of a linear layer's
/// input, written into `into` (`(rows, in)`), or added to what it holds
/// with `accumulate`.
fn input_gradient(
    into: &mut [f32],
    accumulate: bool,
    grad: &[f32],
    out_dim: usize,
    w: &[f32],
    in_dim: usize,
    par: Parallelism,
) {
    let rows = grad.len() / out_dim;
    matmul(
        rows,
        in_dim,
        out_dim,
        into,
        0,
        in_dim,
        accumulate,
        View::rows(grad, out_dim),
        View::rows(w, in_dim),
        par,
    );
}

/// `grad^T * input`: the `(out, in)` weight gradient of a linear layer,
/// in a buffer from `pool`.
fn weight_gradient(
    pool: &BufferPool,
    grad: &[f32],
    out_dim: usize,
    input: &[f32],
    in_dim: usize,
    par: Parallelism,
) -> Vec<f32> {
    let rows = grad.len() / out_dim;
    let mut out = pool.take(out_dim * in_dim);
    matmul(
        out_dim,
        in_dim,
        rows,
        &mut out,
        0,
        in_dim,
        false,
        View::rows(grad, out_dim).t(),
        View::rows(input, in_dim),
        par,
    );
    out
}

/// Each row shifted to zero mean and scaled to unit variance (the
/// module's `standardize`).
fn standardize_rows(x: &[f32], dim: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    out.par_chunks_mut(dim).for_each(|row| {
        let mean = row.iter().sum::<f32>() / dim as f32;
        row.iter_mut().for_each(|v| *v -= mean);
        let var = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let std = (var + NORM_EPS).sqrt();
        row.iter_mut().for_each(|v| *v /= std);
    });
    out
}

fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

/// `row = w * (g - sum(w g))`: the softmax's backward pass, `row` holding
/// the gradient `g` of the softmax output `w` on entry.
fn softmax_backward_in_place(w: &[f32], row: &mut [f32]) {
    let inner: f32 = w.iter().zip(row.iter()).map(|(w, g)| w * g).sum();
    for (g, w) in row.iter_mut().zip(w) {
        *g = w * (*g - inner);
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Indices of the module's parameters in the step's [`Reader`].
struct ParamIndex {
    projection: Option<ProjectionIndex>,
    query_branch: Option<usize>,
    fusion_gate: Option<usize>,
}

/// The value projection's parameters: `w_v`, `b_v`, `w_o` (weight, bias),
/// the layer norm (gain, bias) from `first`, then `w_vq` when present.
struct ProjectionIndex {
    first: usize,
    w_vq: Option<usize>,
}

/// Fixed positions of the parameters every supported module has.
const INPUT_W: usize = 0;
const INPUT_B: usize = 1;
const QUERY_W: usize = 2;
const QUERY_B: usize = 3;
const KEY_W: usize = 4;
const CLASSIFIER_W: usize = 5;
const CLASSIFIER_B: usize = 6;

impl NativeStep for MemoryAttention {
    fn loss_and_gradients(
        &self,
        batch: &Batch,
        rows: NeighbourRows,
        objective: &Objective,
    ) -> candle_core::Result<StepGradients> {
        if !self.native_step_supported() {
            candle_core::bail!("native step: this module's options train through autograd");
        }
        let cfg = &self.config;
        let layer = &self.layers[0];
        let n = batch.neighbours.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("the memory attention module needs neighbours".into())
        })?;
        // The module's parameters, in a fixed order (ParamIndex).
        let mut params = vec![
            self.input.weight(),
            bias_of(&self.input)?,
            layer.w_q.weight(),
            bias_of(&layer.w_q)?,
            &layer.w_k,
            self.classifier.weight(),
            bias_of(&self.classifier)?,
        ];
        let projection = match &layer.projection {
            None => None,
            Some(p) => {
                let first = params.len();
                params.extend([
                    &p.w_v,
                    &p.b_v,
                    p.w_o.weight(),
                    bias_of(&p.w_o)?,
                    &p.norm.weight,
                    &p.norm.bias,
                ]);
                let w_vq = p.w_vq.as_ref().map(|w| {
                    params.push(w.weight());
                    params.len() - 1
                });
                Some(ProjectionIndex { first, w_vq })
            }
        };
        let query_branch = match &self.query_branch {
            None => None,
            Some(branch) => {
                params.extend([branch.weight(), bias_of(branch)?]);
                Some(params.len() - 2)
            }
        };
        let fusion_gate = match &self.fusion_gate {
            None => None,
            Some(gate) => {
                params.extend([gate.weight(), bias_of(gate)?]);
                Some(params.len() - 2)
            }
        };
        let index = ParamIndex {
            projection,
            query_branch,
            fusion_gate,
        };

        let data_tensors = [
            batch.queries.contiguous()?,
            n.valid.contiguous()?,
            n.mean_values.contiguous()?,
        ];
        let labels: Vec<u32> = batch.labels.to_vec1()?;
        let data_refs: Vec<&candle_core::Tensor> = data_tensors.iter().collect();
        let data = Reader::new(&data_refs)?;
        let weights = Reader::new(&params)?;
        let (b, k) = n.valid.dims2()?;
        let dims = Dims {
            b,
            d: cfg.input_dim,
            dv: cfg.value_dim,
            k,
            h: cfg.heads,
            e: cfg.hidden / cfg.heads,
            hidden: cfg.hidden,
            c: cfg.classes,
            iq: usize::from(cfg.include_query),
        };
        if labels.len() != b || data.get(0).len() != b * dims.d || data.get(2).len() != b * dims.dv
        {
            candle_core::bail!("native step: the batch's shapes disagree");
        }
        if let Some(bias) = objective.logit_bias {
            if bias.len() != dims.c {
                candle_core::bail!("native step: the logit bias has the wrong length");
            }
        }
        // The neighbours' rows: slices of the gathered batch, or of the bank.
        let gathered_tensors = match rows {
            NeighbourRows::Gathered => {
                let (Some(keys), Some(values), Some(moments)) = (&n.keys, &n.values, &n.moments)
                else {
                    candle_core::bail!(
                        "the memory attention module needs the neighbours' key and value rows"
                    );
                };
                if keys.dims3()? != (b, k, dims.d) || values.dims3()? != (b, k, dims.dv) {
                    candle_core::bail!("native step: the batch's neighbour rows have other shapes");
                }
                vec![
                    keys.contiguous()?,
                    values.contiguous()?,
                    moments.keys.0.contiguous()?,
                    moments.keys.1.contiguous()?,
                    moments.values.0.contiguous()?,
                    moments.values.1.contiguous()?,
                ]
            }
            NeighbourRows::Bank { .. } => Vec::new(),
        };
        let gathered_refs: Vec<&candle_core::Tensor> = gathered_tensors.iter().collect();
        let gathered = Reader::new(&gathered_refs)?;
        let empty_row = vec![0.0f32; dims.d.max(dims.dv)];
        let rows = match rows {
            NeighbourRows::Gathered => RowRefs {
                keys: gathered.get(0).chunks_exact(dims.d).collect(),
                values: gathered.get(1).chunks_exact(dims.dv).collect(),
                key_mean: gathered.get(2).to_vec(),
                key_inv_std: gathered.get(3).to_vec(),
                value_mean: gathered.get(4).to_vec(),
                value_inv_std: gathered.get(5).to_vec(),
            },
            NeighbourRows::Bank { bank, ids } => {
                if ids.len() != b * k || bank.key_dim != dims.d || bank.value_dim != dims.dv {
                    candle_core::bail!(
                        "native step: the neighbour bank or the ids do not fit the batch"
                    );
                }
                RowRefs::from_bank(bank, ids, &empty_row)
            }
        };
        let inputs = Inputs {
            queries: data.get(0),
            valid: data.get(1),
            mean_values: data.get(2),
            rows,
            labels: &labels,
        };
        let (loss, grads) = self.step(&dims, &inputs, &weights, &index, objective);
        Ok(StepGradients {
            loss,
            gradients: params.into_iter().cloned().zip(grads).collect(),
        })
    }

    fn reads_mean_values(&self) -> bool {
        // Only `combine = values` gives the classifier the plain average.
        self.config.combine == Combine::Values
    }

    fn recycle(&self, gradients: StepGradients) {
        self.native_buffers
            .give(gradients.gradients.into_iter().map(|(_, grad)| grad));
    }
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    d: usize,
    dv: usize,
    k: usize,
    h: usize,
    e: usize,
    hidden: usize,
    c: usize,
    /// 1 with the query as the first attended item, else 0.
    iq: usize,
}

impl Dims {
    fn items(&self) -> usize {
        self.k + self.iq
    }
}

struct Inputs<'a> {
    queries: &'a [f32],
    valid: &'a [f32],
    mean_values: &'a [f32],
    rows: RowRefs<'a>,
    labels: &'a [u32],
}

/// Per (query, neighbour) slot, `q * k + j`: the neighbour's L2-normalised
/// key and value rows and the moments that standardise them (an empty slot:
/// a zero row, mean 0, inverse deviation 1, as a gathered batch has).
struct RowRefs<'a> {
    keys: Vec<&'a [f32]>,
    values: Vec<&'a [f32]>,
    key_mean: Vec<f32>,
    key_inv_std: Vec<f32>,
    value_mean: Vec<f32>,
    value_inv_std: Vec<f32>,
}

impl<'a> RowRefs<'a> {
    fn from_bank(bank: &'a NeighbourBank, ids: &[i64], empty: &'a [f32]) -> RowRefs<'a> {
        let present = |id: i64| (id >= 0 && (id as usize) < bank.rows()).then_some(id as usize);
        let (d, dv) = (bank.key_dim, bank.value_dim);
        let moments = |all: &[crate::bank::RowMoments]| -> (Vec<f32>, Vec<f32>) {
            ids.iter()
                .map(|&id| match present(id).and_then(|i| all.get(i)) {
                    Some(m) => (m.mean, m.inv_std),
                    None => (0.0, 1.0),
                })
                .unzip()
        };
        let (key_mean, key_inv_std) = moments(&bank.key_moments);
        let (value_mean, value_inv_std) = moments(bank.value_moments());
        RowRefs {
            keys: ids
                .iter()
                .map(|&id| match present(id) {
                    Some(i) => &bank.keys[i * d..(i + 1) * d],
                    None => &empty[..d],
                })
                .collect(),
            values: ids
                .iter()
                .map(|&id| match present(id) {
                    Some(i) => bank.value_row(i),
                    None => &empty[..dv],
                })
                .collect(),
            key_mean,
            key_inv_std,
            value_mean,
            value_inv_std,
        }
    }
}

/// What the residual branch's forward pass keeps for its backward pass.
struct ResidualActivations {
    /// `(B, H, dv)`: attention-pooled standardised values per head.
    pooled: Vec<f32>,
    /// `(B, N)`: the value projection of the standardised query (with
    /// `include_query`).
    query_values: Option<Vec<f32>>,
    /// `(B, N)`: the pooled values projected, before `w_o`.
    projected: Vec<f32>,
    /// `(B, N)`: the second dropout mask.
    mask: Option<Vec<f32>>,
    /// `(B, N)` and `(B,)`: the normalised sum and its inverse deviation.
    normed: Vec<f32>,
    inv_std: Vec<f32>,
}

impl MemoryAttention {
    /// The loss and the gradients, in the order of the parameter list.
    fn step(
        &self,
        dm: &Dims,
        inp: &Inputs,
        wr: &Reader,
        ix: &ParamIndex,
        objective: &Objective,
    ) -> (f32, Vec<Vec<f32>>) {
        let cfg = &self.config;
        let par = threads();
        let Dims {
            b,
            d,
            dv,
            k,
            h,
            e,
            hidden,
            c,
            iq,
        } = *dm;
        let items = dm.items();
        let score_scale = (1.0 / (e as f64).sqrt()) as f32;

        // ---- forward ----
        let qs = standardize_rows(inp.queries, d);
        let x = linear_forward(&qs, d, wr.get(INPUT_W), Some(wr.get(INPUT_B)), hidden, par);
        let qh = linear_forward(
            &x,
            hidden,
            wr.get(QUERY_W),
            Some(wr.get(QUERY_B)),
            hidden,
            par,
        );
        let w_k = wr.get(KEY_W);
        // u (H, B, d): each head's query mapped back into key space.
        let pool = &self.native_buffers;
        let mut u = pool.take(h * b * d);
        per_head_products(
            h,
            b,
            d,
            e,
            &mut u,
            |head| View::strided(&qh, head * e, hidden),
            |head| View::strided(w_k, head * e * d, d),
        );
        // Attention weights (B, H, items).
        let mut attention = vec![0.0f32; b * h * items];
        attention
            .par_chunks_mut(h * items)
            .enumerate()
            .for_each(|(q, rows)| {
                let keys_q = &inp.rows.keys[q * k..(q + 1) * k];
                kernels::dots(&u[q * d..], b * d, h, keys_q, d, &mut rows[iq..], items);
                for head in 0..h {
                    let u_h = &u[(head * b + q) * d..(head * b + q + 1) * d];
                    let u_sum: f32 = u_h.iter().sum();
                    let row = &mut rows[head * items..(head + 1) * items];
                    if iq == 1 {
                        row[0] = dot(u_h, &qs[q * d..(q + 1) * d]) * score_scale;
                    }
                    for j in 0..k {
                        let at = q * k + j;
                        let score = (row[iq + j] - u_sum * inp.rows.key_mean[at])
                            * inp.rows.key_inv_std[at];
                        row[iq + j] = score * score_scale + (inp.valid[at] - 1.0) * 1e9;
                    }
                    softmax_in_place(row);
                }
            });
        let attention_mask = self.dropout_mask(attention.len());
        let dropped: std::borrow::Cow<[f32]> = match &attention_mask {
            None => std::borrow::Cow::Borrowed(&attention),
            Some(mask) => attention.iter().zip(mask).map(|(a, m)| a * m).collect(),
        };

        let (z, z_dim, residual) = match &ix.projection {
            None => {
                // combine = values: [q ; sum_j a_j v_j ; mean_j v_j], a_j the heads' mean weight.
                let z_dim = d + 2 * dv;
                let mut z = vec![0.0f32; b * z_dim];
                z.par_chunks_mut(z_dim).enumerate().for_each(|(q, row)| {
                    row[..d].copy_from_slice(&inp.queries[q * d..(q + 1) * d]);
                    row[d + dv..].copy_from_slice(&inp.mean_values[q * dv..(q + 1) * dv]);
                    let attended = &mut row[d..d + dv];
                    for j in 0..k {
                        let weight = (0..h)
                            .map(|head| dropped[(q * h + head) * items + j])
                            .sum::<f32>()
                            / h as f32;
                        let value = inp.rows.values[q * k + j];
                        for (a, v) in attended.iter_mut().zip(value) {
                            *a += weight * v;
                        }
                    }
                });
                (z, z_dim, None)
            }
            Some(p) => {
                let (w_v, b_v) = (wr.get(p.first), wr.get(p.first + 1));
                let (w_o, b_o) = (wr.get(p.first + 2), wr.get(p.first + 3));
                let (gain, shift) = (wr.get(p.first + 4), wr.get(p.first + 5));
                // pooled (B, H, dv) = sum_j a_hj standardised(v_j).
                let mut pooled = pool.take(b * h * dv);
                pooled
                    .par_chunks_mut(h * dv)
                    .enumerate()
                    .for_each(|(q, out)| {
                        let mut scaled = vec![0.0f32; h * k];
                        let mut offsets = vec![0.0f32; h];
                        for head in 0..h {
                            for j in 0..k {
                                let at = q * k + j;
                                let s = dropped[(q * h + head) * items + iq + j]
                                    * inp.rows.value_inv_std[at];
                                scaled[head * k + j] = s;
                                offsets[head] += s * inp.rows.value_mean[at];
                            }
                        }
                        kernels::mix(&scaled, h, &inp.rows.values[q * k..(q + 1) * k], dv, out);
                        for head in 0..h {
                            out[head * dv..(head + 1) * dv]
                                .iter_mut()
                                .for_each(|v| *v -= offsets[head]);
                        }
                    });
                // Per head (H, B, e), then gathered into (B, N) rows.
                let mut per_head = vec![0.0f32; h * b * e];
                per_head_products(
                    h,
                    b,
                    e,
                    dv,
                    &mut per_head,
                    |head| View::strided(&pooled, head * dv, h * dv),
                    |head| View::strided(w_v, head * e * dv, dv).t(),
                );
                let mut projected = vec![0.0f32; b * hidden];
                let query_values = p
                    .w_vq
                    .map(|w| linear_forward(&qs, d, wr.get(w), None, hidden, par));
                projected
                    .par_chunks_mut(hidden)
                    .enumerate()
                    .for_each(|(q, row)| {
                        for head in 0..h {
                            row[head * e..(head + 1) * e].copy_from_slice(
                                &per_head[(head * b + q) * e..(head * b + q + 1) * e],
                            );
                        }
                        if let Some(qv) = &query_values {
                            for head in 0..h {
                                let a = dropped[(q * h + head) * items];
                                for t in head * e..(head + 1) * e {
                                    row[t] += qv[q * hidden + t] * a;
                                }
                            }
                        }
                        for (v, bias) in row.iter_mut().zip(b_v) {
                            *v += bias;
                        }
                    });
                let attended = linear_forward(&projected, hidden, w_o, Some(b_o), hidden, par);
                let mask = self.dropout_mask(attended.len());
                // Residual sum, layer norm.
                let mut normed = vec![0.0f32; b * hidden];
                let mut inv_std = vec![0.0f32; b];
                let mut z = vec![0.0f32; b * hidden];
                normed
                    .par_chunks_mut(hidden)
                    .zip(z.par_chunks_mut(hidden))
                    .zip(inv_std.par_iter_mut())
                    .enumerate()
                    .for_each(|(q, ((nrow, zrow), rstd))| {
                        for t in 0..hidden {
                            let at = q * hidden + t;
                            let m = mask.as_ref().map_or(1.0, |m| m[at]);
                            nrow[t] = x[at] + attended[at] * m;
                        }
                        let mean = nrow.iter().sum::<f32>() / hidden as f32;
                        nrow.iter_mut().for_each(|v| *v -= mean);
                        let var = nrow.iter().map(|v| v * v).sum::<f32>() / hidden as f32;
                        *rstd = 1.0 / (var + NORM_EPS).sqrt();
                        for t in 0..hidden {
                            nrow[t] *= *rstd;
                            zrow[t] = nrow[t] * gain[t] + shift[t];
                        }
                    });
                (
                    z,
                    hidden,
                    Some(ResidualActivations {
                        pooled,
                        query_values,
                        projected,
                        mask,
                        normed,
                        inv_std,
                    }),
                )
            }
        };

        // Classifier, fusion, loss; dlogits (B, C) is the loss's gradient
        // with respect to the classifier's logits.
        let logits = linear_forward(
            &z,
            z_dim,
            wr.get(CLASSIFIER_W),
            Some(wr.get(CLASSIFIER_B)),
            c,
            par,
        );
        let smoothing = objective.label_smoothing;
        let label_weight = (1.0 - smoothing) / b as f32;
        let spread_weight = smoothing / (b * c) as f32;
        let add_bias = |row: &mut [f32]| {
            if let Some(bias) = objective.logit_bias {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        };
        let mut dlogits = logits;
        // (loss of the row, gate gradient) per query.
        let mut per_query = vec![(0.0f64, 0.0f32); b];
        let mut dquery_logits = None;
        match ix.query_branch {
            None => {
                let losses = cross_entropy_backward(&mut dlogits, c, inp.labels, objective);
                per_query
                    .iter_mut()
                    .zip(losses)
                    .for_each(|(out, loss)| out.0 = loss);
            }
            Some(branch) => {
                let mut query_logits =
                    linear_forward(&qs, d, wr.get(branch), Some(wr.get(branch + 1)), c, par);
                let gate = ix.fusion_gate.map(|g| (wr.get(g), wr.get(g + 1)[0]));
                let fixed = cfg.fusion_weight;
                dlogits
                    .par_chunks_mut(c)
                    .zip(query_logits.par_chunks_mut(c))
                    .zip(per_query.par_iter_mut())
                    .enumerate()
                    .for_each(|(q, ((p1, p2), out))| {
                        add_bias(p1);
                        add_bias(p2);
                        softmax_in_place(p1);
                        softmax_in_place(p2);
                        let g = match gate {
                            Some((w, bias)) => {
                                sigmoid(dot(w, &z[q * z_dim..(q + 1) * z_dim]) + bias)
                            }
                            None => fixed,
                        };
                        let label = inp.labels[q] as usize;
                        let (mut row_loss, mut dgate) = (0.0f64, 0.0f32);
                        let (mut inner1, mut inner2) = (0.0f32, 0.0f32);
                        // dloss/dmixed_c = g_c / (mixed_c + floor), kept per class;
                        // each branch's softmax backward needs sum_c p_c dp_c first.
                        let mut dmixed = vec![0.0f32; c];
                        for class in 0..c {
                            let mixed = g * p1[class] + (1.0 - g) * p2[class] + FUSION_FLOOR;
                            let dl =
                                -spread_weight - if class == label { label_weight } else { 0.0 };
                            if dl != 0.0 {
                                row_loss += dl as f64 * mixed.ln() as f64;
                            }
                            let dm = dl / mixed;
                            dmixed[class] = dm;
                            dgate += dm * (p1[class] - p2[class]);
                            inner1 += p1[class] * dm;
                            inner2 += p2[class] * dm;
                        }
                        let (inner1, inner2) = (g * inner1, (1.0 - g) * inner2);
                        for class in 0..c {
                            p1[class] *= g * dmixed[class] - inner1;
                            p2[class] *= (1.0 - g) * dmixed[class] - inner2;
                        }
                        out.0 = row_loss;
                        out.1 = if gate.is_some() {
                            dgate * g * (1.0 - g)
                        } else {
                            0.0
                        };
                    });
                dquery_logits = Some(query_logits);
            }
        }
        let mut loss = per_query.iter().map(|(l, _)| l).sum::<f64>() as f32;

        // The attention prior: mean over queries and heads of
        // KL(uniform || renormalised neighbour weights), and its gradient
        // with respect to the (undropped) weights.
        let mut prior_grad = None;
        if cfg.attention_prior > 0.0 {
            let weight = cfg.attention_prior / (b * h) as f32;
            let mut grad = vec![0.0f32; b * h * items];
            let kl: f64 = grad
                .par_chunks_mut(items)
                .enumerate()
                .map(|(row, g)| {
                    let q = row / h;
                    let w = &attention[row * items + iq..(row + 1) * items];
                    let valid = &inp.valid[q * k..(q + 1) * k];
                    let count = valid.iter().sum::<f32>().max(1.0);
                    let share = w.iter().sum::<f32>() + 1e-12;
                    let mut kl = 0.0f64;
                    let mut inner = 0.0f32;
                    for j in 0..k {
                        let uniform = valid[j] / count;
                        let renormed = w[j] / share;
                        kl += (uniform * ((uniform + 1e-12).ln() - (renormed + 1e-12).ln())) as f64;
                        let dr = -weight * uniform / (renormed + 1e-12);
                        g[iq + j] = dr / share;
                        inner += dr * w[j];
                    }
                    let correction = inner / (share * share);
                    g[iq..].iter_mut().for_each(|v| *v -= correction);
                    kl
                })
                .sum();
            loss += (kl / (b * h) as f64) as f32 * cfg.attention_prior;
            prior_grad = Some(grad);
        }

        // ---- backward ----
        let classifier_w = wr.get(CLASSIFIER_W);
        let d_classifier_w = weight_gradient(pool, &dlogits, c, &z, z_dim, par);
        let d_classifier_b = column_sums(&dlogits, c);
        let mut dz = vec![0.0f32; b * z_dim];
        input_gradient(&mut dz, false, &dlogits, c, classifier_w, z_dim, par);
        let mut gate_grads = None;
        if let Some(g) = ix.fusion_gate {
            let w = wr.get(g);
            let mut dw = vec![0.0f32; z_dim];
            let mut db = 0.0f32;
            for (q, (_, dgate)) in per_query.iter().enumerate() {
                db += dgate;
                for t in 0..z_dim {
                    dw[t] += dgate * z[q * z_dim + t];
                    dz[q * z_dim + t] += dgate * w[t];
                }
            }
            gate_grads = Some((dw, vec![db]));
        }
        let branch_grads = dquery_logits.as_ref().map(|dql| {
            (
                weight_gradient(pool, dql, c, &qs, d, par),
                column_sums(dql, c),
            )
        });

        // d attention (B, H, items), then through the dropout.
        let mut dattention = vec![0.0f32; b * h * items];
        let mut projection_grads = Vec::new();
        // The gradient of x through the residual connection (with a projection).
        let mut dx_residual = None;
        match (&ix.projection, &residual) {
            (Some(p), Some(act)) => {
                let (w_v, w_o) = (wr.get(p.first), wr.get(p.first + 2));
                let gain = wr.get(p.first + 4);
                // Layer norm backward: dr (B, N) into dsum.
                let mut d_gain = vec![0.0f32; hidden];
                let mut d_shift = vec![0.0f32; hidden];
                for q in 0..b {
                    for t in 0..hidden {
                        let g = dz[q * hidden + t];
                        d_gain[t] += g * act.normed[q * hidden + t];
                        d_shift[t] += g;
                    }
                }
                let mut dsum = vec![0.0f32; b * hidden];
                dsum.par_chunks_mut(hidden)
                    .enumerate()
                    .for_each(|(q, row)| {
                        let normed = &act.normed[q * hidden..(q + 1) * hidden];
                        let mut mean1 = 0.0f32;
                        let mut mean2 = 0.0f32;
                        for t in 0..hidden {
                            let g = dz[q * hidden + t] * gain[t];
                            row[t] = g;
                            mean1 += g;
                            mean2 += g * normed[t];
                        }
                        mean1 /= hidden as f32;
                        mean2 /= hidden as f32;
                        let rstd = act.inv_std[q];
                        for t in 0..hidden {
                            row[t] = rstd * (row[t] - mean1 - normed[t] * mean2);
                        }
                    });
                // Through the second dropout into w_o.
                let dattended: std::borrow::Cow<[f32]> = match &act.mask {
                    None => std::borrow::Cow::Borrowed(&dsum),
                    Some(mask) => dsum.iter().zip(mask).map(|(g, m)| g * m).collect(),
                };
                let d_wo = weight_gradient(pool, &dattended, hidden, &act.projected, hidden, par);
                let d_bo = column_sums(&dattended, hidden);
                let mut dprojected = vec![0.0f32; b * hidden];
                input_gradient(&mut dprojected, false, &dattended, hidden, w_o, hidden, par);
                let d_bv = column_sums(&dprojected, hidden);
                // The query item's value: its weight and w_vq.
                let d_wvq = act.query_values.as_ref().map(|qv| {
                    let mut dqv = vec![0.0f32; b * hidden];
                    dqv.par_chunks_mut(hidden)
                        .zip(dattention.par_chunks_mut(h * items))
                        .enumerate()
                        .for_each(|(q, (row, da))| {
                            for head in 0..h {
                                let a = dropped[(q * h + head) * items];
                                let mut s = 0.0f32;
                                for t in head * e..(head + 1) * e {
                                    let g = dprojected[q * hidden + t];
                                    s += g * qv[q * hidden + t];
                                    row[t] = g * a;
                                }
                                da[head * items] = s;
                            }
                        });
                    weight_gradient(pool, &dqv, hidden, &qs, d, par)
                });
                // w_v, and the pooled values' gradient.
                let mut d_wv = pool.take(hidden * dv);
                per_head_products(
                    h,
                    e,
                    dv,
                    b,
                    &mut d_wv,
                    |head| View::strided(&dprojected, head * e, hidden).t(),
                    |head| View::strided(&act.pooled, head * dv, h * dv),
                );
                // (H, B, dv).
                let mut dpooled = pool.take(h * b * dv);
                per_head_products(
                    h,
                    b,
                    dv,
                    e,
                    &mut dpooled,
                    |head| View::strided(&dprojected, head * e, hidden),
                    |head| View::strided(w_v, head * e * dv, dv),
                );
                // Into the neighbours' weights: the standardised values' products.
                dattention
                    .par_chunks_mut(h * items)
                    .enumerate()
                    .for_each(|(q, da)| {
                        let mut raw = vec![0.0f32; h * k];
                        kernels::dots(
                            &dpooled[q * dv..],
                            b * dv,
                            h,
                            &inp.rows.values[q * k..(q + 1) * k],
                            dv,
                            &mut raw,
                            k,
                        );
                        for head in 0..h {
                            let at = (head * b + q) * dv;
                            let dp_sum: f32 = dpooled[at..at + dv].iter().sum();
                            for j in 0..k {
                                let at = q * k + j;
                                da[head * items + iq + j] = (raw[head * k + j]
                                    - dp_sum * inp.rows.value_mean[at])
                                    * inp.rows.value_inv_std[at];
                            }
                        }
                    });
                projection_grads = vec![d_wv, d_bv, d_wo, d_bo, d_gain, d_shift];
                projection_grads.extend(d_wvq);
                dx_residual = Some(dsum);
                pool.give([dpooled]);
            }
            _ => {
                // combine = values: the attended part of dz, through the heads' mean.
                dattention
                    .par_chunks_mut(h * items)
                    .enumerate()
                    .for_each(|(q, da)| {
                        let dattended = &dz[q * z_dim + d..q * z_dim + d + dv];
                        for j in 0..k {
                            let g = dot(dattended, inp.rows.values[q * k + j]) / h as f32;
                            for head in 0..h {
                                da[head * items + j] = g;
                            }
                        }
                    });
            }
        }
        if let Some(mask) = &attention_mask {
            dattention.iter_mut().zip(mask).for_each(|(g, m)| *g *= m);
        }
        if let Some(prior) = &prior_grad {
            dattention.iter_mut().zip(prior).for_each(|(g, p)| *g += p);
        }
        // Softmax backward and the scores' scale: dscores (B, H, items).
        dattention
            .par_chunks_mut(items)
            .zip(attention.par_chunks(items))
            .for_each(|(g, w)| {
                softmax_backward_in_place(w, g);
                g.iter_mut().for_each(|v| *v *= score_scale);
            });
        let dscores = dattention;
        // du (B, H, d) = sum_j dscore_j standardised(k_j) (+ dscore_self q).
        let mut du = pool.take(b * h * d);
        du.par_chunks_mut(h * d).enumerate().for_each(|(q, out)| {
            let mut scaled = vec![0.0f32; h * k];
            let mut offsets = vec![0.0f32; h];
            for head in 0..h {
                for j in 0..k {
                    let at = q * k + j;
                    let s = dscores[(q * h + head) * items + iq + j] * inp.rows.key_inv_std[at];
                    scaled[head * k + j] = s;
                    offsets[head] += s * inp.rows.key_mean[at];
                }
            }
            kernels::mix(&scaled, h, &inp.rows.keys[q * k..(q + 1) * k], d, out);
            let query = &qs[q * d..(q + 1) * d];
            for head in 0..h {
                let self_score = if iq == 1 {
                    dscores[(q * h + head) * items]
                } else {
                    0.0
                };
                let row = &mut out[head * d..(head + 1) * d];
                for (v, x) in row.iter_mut().zip(query) {
                    *v += self_score * x - offsets[head];
                }
            }
        });
        // Through u = W_k,h^T qh_h: dqh (B, N) and dW_k (N, d).
        let mut dqh_per_head = vec![0.0f32; h * b * e];
        per_head_products(
            h,
            b,
            e,
            d,
            &mut dqh_per_head,
            |head| View::strided(&du, head * d, h * d),
            |head| View::strided(w_k, head * e * d, d).t(),
        );
        let mut dqh = vec![0.0f32; b * hidden];
        dqh.par_chunks_mut(hidden).enumerate().for_each(|(q, row)| {
            for head in 0..h {
                row[head * e..(head + 1) * e]
                    .copy_from_slice(&dqh_per_head[(head * b + q) * e..(head * b + q + 1) * e]);
            }
        });
        let mut d_wk = pool.take(hidden * d);
        per_head_products(
            h,
            e,
            d,
            b,
            &mut d_wk,
            |head| View::strided(&qh, head * e, hidden).t(),
            |head| View::strided(&du, head * d, h * d),
        );
        let d_wq = weight_gradient(pool, &dqh, hidden, &x, hidden, par);
        let d_bq = column_sums(&dqh, hidden);
        // dx: the residual's share (with a projection) plus w_q's.
        let (mut dx, accumulate) = match dx_residual {
            Some(dx) => (dx, true),
            None => (vec![0.0f32; b * hidden], false),
        };
        input_gradient(
            &mut dx,
            accumulate,
            &dqh,
            hidden,
            wr.get(QUERY_W),
            hidden,
            par,
        );
        let d_wi = weight_gradient(pool, &dx, hidden, &qs, d, par);
        let d_bi = column_sums(&dx, hidden);

        let mut grads = vec![d_wi, d_bi, d_wq, d_bq, d_wk, d_classifier_w, d_classifier_b];
        grads.extend(projection_grads);
        if let Some((w, b)) = branch_grads {
            grads.extend([w, b]);
        }
        if let Some((w, b)) = gate_grads {
            grads.extend([w, b]);
        }
        pool.give([u, du]);
        if let Some(act) = residual {
            pool.give([act.pooled]);
        }
        (loss, grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::NeighbourBank;
    use crate::classifier::Classifier;
    use crate::mam::MamConfig;
    use crate::rng::SplitMix64;
    use crate::samples::{NeighbourUse, SampleSet};
    use candle_core::{Device, Tensor};

    const SEED: u64 = 7;

    fn values(rng: &mut SplitMix64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.3)
            .collect()
    }

    /// A batch of 5 queries with 4 neighbours each, two slots empty.
    /// The test batch with its neighbours' rows gathered, and the same
    /// batch without rows with the bank and the ids that locate them.
    struct TestBatch {
        gathered: Batch,
        lean: Batch,
        bank: NeighbourBank,
        ids: Vec<i64>,
    }

    impl TestBatch {
        /// The batch and the row source of each way of reading the rows.
        fn ways(&self) -> [(&'static str, &Batch, NeighbourRows<'_>); 2] {
            [
                ("gathered rows", &self.gathered, NeighbourRows::Gathered),
                (
                    "rows from the bank",
                    &self.lean,
                    NeighbourRows::Bank {
                        bank: &self.bank,
                        ids: &self.ids,
                    },
                ),
            ]
        }
    }

    fn batch(config: &MamConfig) -> TestBatch {
        let (d, dv, k, n) = (config.input_dim, config.value_dim, 4, 5);
        let mut rng = SplitMix64::new(3);
        let rows = 9;
        let bank = NeighbourBank::from_matrices(
            values(&mut rng, rows * d),
            d,
            values(&mut rng, rows * dv),
            dv,
        )
        .unwrap();
        let labels = (0..n).map(|i| (i * 2) % config.classes).collect();
        let mut neighbours: Vec<i64> = (0..n * k).map(|_| rng.below(rows) as i64).collect();
        neighbours[3] = -1;
        neighbours[k * 2 + 1] = -1;
        let samples =
            SampleSet::new("test", values(&mut rng, n * d), d, labels, neighbours, k).unwrap();
        let all: Vec<usize> = (0..n).collect();
        let gathered = samples
            .batch(&all, Some(&bank), NeighbourUse::Rows, &Device::Cpu)
            .unwrap();
        // Mean values only where the module reads them, as training builds it.
        let lean = samples
            .batch_without_rows(&all, &bank, config.combine == Combine::Values, &Device::Cpu)
            .unwrap();
        TestBatch {
            gathered,
            lean,
            ids: samples.neighbour_ids(&all),
            bank,
        }
    }

    fn model(config: &MamConfig) -> (candle_nn::VarMap, MemoryAttention) {
        let (vars, vb) = crate::vars::new_vars(&Device::Cpu);
        let model = MemoryAttention::new(config.clone(), vb).unwrap();
        model.initialise(&vars, SEED).unwrap();
        (vars, model)
    }

    /// The autograd path's loss and gradients (as `train` computes them)
    /// for the same parameters the native step returns.
    fn autograd(
        model: &MemoryAttention,
        batch: &Batch,
        objective: &Objective,
        params: &[Tensor],
    ) -> (f32, Vec<Vec<f32>>) {
        let bias = objective
            .logit_bias
            .map(|b| Tensor::from_slice(b, b.len(), &Device::Cpu).unwrap());
        let loss = crate::train::autograd_loss(
            model,
            batch,
            bias.as_ref(),
            objective.label_smoothing as f64,
        )
        .unwrap();
        let grads = loss.backward().unwrap();
        let grads = params
            .iter()
            .map(|p| {
                grads
                    .get(p)
                    .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
                    .unwrap_or_else(|| vec![0.0; p.elem_count()])
            })
            .collect();
        (loss.to_scalar().unwrap(), grads)
    }

    fn configs() -> Vec<(&'static str, MamConfig)> {
        let base = MamConfig {
            hidden: 8,
            heads: 2,
            ..MamConfig::new(12, 10, 6)
        };
        let values = MamConfig {
            combine: Combine::Values,
            include_query: false,
            attention_prior: 0.1,
            ..base.clone()
        };
        vec![
            ("residual", base.clone()),
            (
                "residual with a prior",
                MamConfig {
                    attention_prior: 0.2,
                    ..base.clone()
                },
            ),
            (
                "residual, fusion, no dropout",
                MamConfig {
                    fusion: true,
                    dropout: 0.0,
                    ..base.clone()
                },
            ),
            (
                "residual without the query, fusion gate",
                MamConfig {
                    include_query: false,
                    fusion: true,
                    fusion_gate: true,
                    ..base.clone()
                },
            ),
            ("values with a prior", values.clone()),
            (
                "values, fusion weight 0.3",
                MamConfig {
                    fusion: true,
                    fusion_weight: 0.3,
                    attention_prior: 0.0,
                    ..values.clone()
                },
            ),
            (
                "values, fusion gate",
                MamConfig {
                    fusion: true,
                    fusion_gate: true,
                    ..values
                },
            ),
        ]
    }

    fn objectives(bias: &[f32]) -> Vec<Objective<'_>> {
        vec![
            Objective::default(),
            Objective {
                logit_bias: Some(bias),
                label_smoothing: 0.1,
            },
        ]
    }

    /// Losses and gradients equal candle's autograd on the same weights and
    /// dropout masks, for every option the native step covers, with the
    /// neighbours' rows gathered into the batch or read from the bank.
    #[test]
    fn the_native_step_equals_autograd() {
        let bias: Vec<f32> = (0..6).map(|c| -0.3 * c as f32).collect();
        for (config_name, config) in configs() {
            let test_batch = batch(&config);
            for objective in objectives(&bias) {
                for (way, batch, rows) in test_batch.ways() {
                    let name = format!("{config_name}, {way}");
                    let (vars, model) = model(&config);
                    let native = model.loss_and_gradients(batch, rows, &objective).unwrap();
                    model.initialise(&vars, SEED).unwrap();
                    let params: Vec<Tensor> =
                        native.gradients.iter().map(|(p, _)| p.clone()).collect();
                    let (loss, grads) = autograd(&model, &test_batch.gathered, &objective, &params);
                    assert!(
                        (native.loss - loss).abs() <= 1e-5 * loss.abs().max(1.0),
                        "{name}: loss {} vs autograd {loss}",
                        native.loss
                    );
                    let names: std::collections::HashMap<_, _> = crate::vars::all_vars(&vars)
                        .into_iter()
                        .map(|(n, v)| (v.as_tensor().id(), n))
                        .collect();
                    assert_eq!(
                        params.len(),
                        names.len(),
                        "{name}: every parameter has a gradient"
                    );
                    for ((param, got), want) in native.gradients.iter().zip(&grads) {
                        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                        let worst = got
                            .iter()
                            .zip(want)
                            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                        assert!(
                            worst <= 1e-4 * scale,
                            "{name}: gradient of {} off by {worst} (scale {scale})",
                            names[&param.id()]
                        );
                    }
                }
            }
        }
    }

    /// The gradients are the loss's derivatives: central differences of the
    /// native loss in a few coordinates of every parameter, dropout masks
    /// held fixed.
    #[test]
    fn native_gradients_match_finite_differences() {
        let bias: Vec<f32> = (0..6).map(|c| 0.2 * c as f32).collect();
        for (name, config) in configs() {
            let test_batch = batch(&config);
            let [_, (_, batch, rows)] = test_batch.ways();
            let objective = Objective {
                logit_bias: Some(&bias),
                label_smoothing: 0.05,
            };
            let (vars, model) = model(&config);
            // Move off the initial point, where zero-initialised parts have
            // one-sided structure.
            let loss_at = |model: &MemoryAttention| {
                *model.dropout_rng.lock().unwrap() = SplitMix64::new(11);
                model.loss_and_gradients(batch, rows, &objective).unwrap()
            };
            let mut rng = SplitMix64::new(5);
            for (_, var) in crate::vars::all_vars(&vars) {
                let t = var.as_tensor();
                let noise =
                    Tensor::from_vec(values(&mut rng, t.elem_count()), t.shape(), t.device())
                        .unwrap();
                var.set(&(t + (noise * 0.2).unwrap()).unwrap()).unwrap();
            }
            let analytic = loss_at(&model);
            for (param, grad) in &analytic.gradients {
                let var = crate::vars::all_vars(&vars)
                    .into_iter()
                    .find(|(_, v)| v.as_tensor().id() == param.id())
                    .map(|(_, v)| v)
                    .unwrap();
                let original: Vec<f32> = param.flatten_all().unwrap().to_vec1().unwrap();
                for probe in 0..3 {
                    let i = (probe * 7919 + 3) % original.len();
                    let h = 1e-2f32;
                    let at = |delta: f32| {
                        let mut moved = original.clone();
                        moved[i] += delta;
                        var.set(&Tensor::from_vec(moved, param.shape(), param.device()).unwrap())
                            .unwrap();
                        loss_at(&model).loss
                    };
                    let numeric = (at(h) - at(-h)) / (2.0 * h);
                    var.set(
                        &Tensor::from_vec(original.clone(), param.shape(), param.device()).unwrap(),
                    )
                    .unwrap();
                    assert!(
                        (numeric - grad[i]).abs() <= 0.03 * grad[i].abs() + 3e-4,
                        "{name}: parameter {:?} [{i}]: analytic {} vs numeric {numeric}",
                        param.dims(),
                        grad[i]
                    );
                }
            }
        }
    }
}
