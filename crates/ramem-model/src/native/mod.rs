//! Training steps written out by hand, outside candle's autograd.
//!
//! candle builds a backward pass from general tensor ops: every op is a pass
//! over memory with a freshly allocated (and often zero-filled) output, and
//! gradient contributions are summed into new tensors. A model that knows
//! its own derivative can do better: each product goes straight to `gemm`
//! with the operand layouts it already has (transposes are strides, not
//! copies), element-wise work is folded into the passes that touch the data
//! anyway, and per-sample work (a query's neighbours) runs on every core.
//!
//! A model offers its step through [`NativeStep`]
//! ([`crate::Classifier::native_step`]); the training loop uses it unless
//! told to use the autograd path ([`crate::train::TrainStep::Autograd`]),
//! which stays as the reference the hand-written steps are tested against.

mod heads;
mod kernels;
pub(crate) mod mam;

use std::ops::Deref;

use candle_core::{Layout, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::bank::NeighbourBank;
use crate::samples::Batch;

/// What a training step minimises besides the model: the training loop's
/// loss options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Objective<'a> {
    /// `(C,)`: added to every branch's logits before the softmax (logit
    /// adjustment).
    pub logit_bias: Option<&'a [f32]>,
    /// Label smoothing epsilon.
    pub label_smoothing: f32,
}

/// One step's loss and the gradient of every parameter it depends on.
pub struct StepGradients {
    /// The batch's loss, as the autograd path computes it.
    pub loss: f32,
    /// `(parameter, gradient)`: the parameter is the model's own tensor
    /// (sharing the optimiser variable's storage and id), the gradient laid
    /// out as it is.
    pub gradients: Vec<(Tensor, Vec<f32>)>,
}

/// Where a training step reads its neighbours' key and value rows.
#[derive(Clone, Copy)]
pub enum NeighbourRows<'a> {
    /// The batch's own tensors (a batch gathered with
    /// [`crate::NeighbourUse::Rows`]).
    Gathered,
    /// In place from the bank: `ids[q * k + j]` is the bank row of query
    /// `q`'s `j`-th neighbour (negative or past the bank: an empty slot).
    /// The batch needs no rows of its own ([`crate::NeighbourUse::MeanValue`]
    /// gives its presence mask and mean values), which spares a training
    /// step the copy of every neighbour's rows.
    Bank {
        bank: &'a NeighbourBank,
        ids: &'a [i64],
    },
}

/// A model's training step, forward and backward, without autograd.
pub trait NativeStep: Send + Sync {
    /// The loss of `batch` in training mode (dropout on) and its gradients,
    /// the neighbours' rows read from `rows`.
    fn loss_and_gradients(
        &self,
        batch: &Batch,
        rows: NeighbourRows,
        objective: &Objective,
    ) -> candle_core::Result<StepGradients>;

    /// Whether the step reads the batch's mean neighbour values (a batch
    /// for [`NeighbourRows::Bank`] can leave them out).
    fn reads_mean_values(&self) -> bool {
        true
    }

    /// Takes back a step's gradient buffers once the optimiser has read
    /// them, for the next step to write into.
    fn recycle(&self, _gradients: StepGradients) {}
}

/// Read access to the f32 data of CPU tensors, held for as long as the
/// reader lives (the optimiser writes the parameters only after a step's
/// forward and backward passes are done with them).
pub(crate) struct Reader<'a> {
    held: Vec<(Box<dyn Deref<Target = Storage> + 'a>, &'a Layout)>,
}

impl<'a> Reader<'a> {
    /// Holds `tensors`, which must be contiguous f32 CPU tensors.
    pub(crate) fn new(tensors: &[&'a Tensor]) -> candle_core::Result<Reader<'a>> {
        let held = tensors
            .iter()
            .map(|t| {
                let (storage, layout) = t.storage_and_layout();
                if !layout.is_contiguous() {
                    candle_core::bail!("native step: a non-contiguous tensor {:?}", t.dims());
                }
                if !matches!(&*storage, Storage::Cpu(candle_core::CpuStorage::F32(_))) {
                    candle_core::bail!("native step: an f32 CPU tensor is needed");
                }
                Ok((
                    Box::new(storage) as Box<dyn Deref<Target = Storage> + 'a>,
                    layout,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Reader { held })
    }

    /// The data of the `i`-th tensor.
    pub(crate) fn get(&self, i: usize) -> &[f32] {
        let (storage, layout) = &self.held[i];
        let Storage::Cpu(candle_core::CpuStorage::F32(data)) = &***storage else {
            unreachable!("checked in Reader::new")
        };
        &data[layout.start_offset()..layout.start_offset() + layout.shape().elem_count()]
    }
}

/// A matrix in a slice: element (i, j) at `offset + i * row_stride + j *
/// col_stride`. A transpose swaps the strides.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// Row-major rows of `cols` elements.
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> View<'a> {
        View {
            data,
            offset: 0,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The sub-matrix starting at element `offset` with row stride `row_stride`.
    pub(crate) fn strided(data: &'a [f32], offset: usize, row_stride: usize) -> View<'a> {
        View {
            data,
            offset,
            row_stride,
            col_stride: 1,
        }
    }

    pub(crate) fn t(self) -> View<'a> {
        View {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Panics unless an `rows x cols` matrix fits (the bound that makes the
    /// raw-pointer product below safe).
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let last = self.offset + (rows - 1) * self.row_stride + (cols - 1) * self.col_stride;
        assert!(last < self.data.len(), "gemm: {what} out of bounds");
    }
}

/// How many threads a large product uses: the current rayon pool's.
pub(crate) fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst = a (m x k) * b (k x n)` (`dst += ...` with `accumulate`), `dst`
/// row-major from element `dst_offset` with row stride `dst_row_stride`.
#[allow(clippy::too_many_arguments)] // a product's shapes and operands
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_offset: usize,
    dst_row_stride: usize,
    accumulate: bool,
    a: View,
    b: View,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                let row = dst_offset + i * dst_row_stride;
                dst[row..row + n].fill(0.0);
            }
        }
        return;
    }
    a.check(m, k, "left operand");
    b.check(k, n, "right operand");
    assert!(
        dst_offset + (m - 1) * dst_row_stride + n <= dst.len(),
        "gemm: destination out of bounds"
    );
    let threads = match par {
        Parallelism::None => 1,
        Parallelism::Rayon(n) => n.max(1),
        #[allow(unreachable_patterns)]
        _ => 1,
    };
    let dst = SharedDst(dst.as_mut_ptr());
    // Split the longer side of the output into one block per thread, each
    // a single-threaded product: gemm's own threading splits finer and
    // synchronises more, which ran the step's 256-row products well below
    // what one gemm call per core reaches.
    let split_columns = n >= m;
    let side = if split_columns { n } else { m };
    let align = if split_columns { 16 } else { 8 };
    let block = side.div_ceil(threads).div_ceil(align) * align;
    let blocks = side.div_ceil(block.max(1));
    let run = |i: usize| {
        let start = i * block;
        let len = block.min(side - start);
        let (rows, cols, a_part, b_part, dst_part) = if split_columns {
            let b_part = View {
                offset: b.offset + start * b.col_stride,
                ..b
            };
            (m, len, a, b_part, dst_offset + start)
        } else {
            let a_part = View {
                offset: a.offset + start * a.row_stride,
                ..a
            };
            (len, n, a_part, b, dst_offset + start * dst_row_stride)
        };
        // SAFETY: the checks above bound every element the product reads
        // and writes; the blocks write disjoint parts of `dst`, a unique
        // borrow that aliases neither operand.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                k,
                dst.get().add(dst_part),
                1,
                dst_row_stride as isize,
                accumulate,
                a_part.data.as_ptr().add(a_part.offset),
                a_part.col_stride as isize,
                a_part.row_stride as isize,
                b_part.data.as_ptr().add(b_part.offset),
                b_part.col_stride as isize,
                b_part.row_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    };
    if blocks <= 1 {
        run(0);
    } else {
        (0..blocks).into_par_iter().for_each(run);
    }
}

/// The destination of a product split over threads, each writing its own
/// block.
#[derive(Clone, Copy)]
struct SharedDst(*mut f32);

// SAFETY: the blocks [`matmul`] hands to threads are disjoint.
unsafe impl Send for SharedDst {}
unsafe impl Sync for SharedDst {}

impl SharedDst {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One product per head, the heads spread over the threads (each product
/// on one): `out` holds `heads` blocks of `m x n` (head-major), block `i`
/// `a(i) (m x k) * b(i) (k x n)`. Per-head products are small (k or n is
/// the head size); split over threads one at a time, they spend more on
/// synchronising than on arithmetic.
#[allow(clippy::too_many_arguments)] // a product's shapes and operands
pub(crate) fn per_head_products<'a>(
    heads: usize,
    m: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
    a: impl Fn(usize) -> View<'a> + Sync,
    b: impl Fn(usize) -> View<'a> + Sync,
) {
    assert_eq!(out.len(), heads * m * n, "per-head products: output size");
    out.par_chunks_mut(m * n)
        .enumerate()
        .for_each(|(head, block)| {
            matmul(
                m,
                n,
                k,
                block,
                0,
                n,
                false,
                a(head),
                b(head),
                Parallelism::None,
            )
        });
}

/// Large step buffers kept from one training step to the next: the
/// per-head activations and their gradients are tens of megabytes each, and
/// a fresh allocation is zero-filled (and, below the allocator's block cache,
/// mapped page by page) every step only to be overwritten.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<f32>>>,
}

/// Buffers the pool keeps at most.
const POOLED_BUFFERS: usize = 48;

impl BufferPool {
    /// A buffer of `len` elements whose contents are unspecified (those of
    /// an earlier step): for outputs written in full.
    pub(crate) fn take(&self, len: usize) -> Vec<f32> {
        let reused = self.free.lock().ok().and_then(|mut free| {
            let i = free.iter().position(|v| v.len() == len)?;
            Some(free.swap_remove(i))
        });
        reused.unwrap_or_else(|| vec![0.0; len])
    }

    /// Hands buffers back for the next step.
    pub(crate) fn give(&self, buffers: impl IntoIterator<Item = Vec<f32>>) {
        if let Ok(mut free) = self.free.lock() {
            for buffer in buffers {
                if free.len() < POOLED_BUFFERS {
                    free.push(buffer);
                }
            }
        }
    }
}

/// The training loss of log-softmax logits and its gradient: `logits`
/// `(B, C)` in, `dloss/dlogits` out, and each row's share of the loss
/// returned. The loss is the labels' mean negative log-likelihood, with
/// label smoothing and the logit adjustment bias of `objective` (the
/// autograd path's `nll` and smoothing terms).
pub(crate) fn cross_entropy_backward(
    logits: &mut [f32],
    classes: usize,
    labels: &[u32],
    objective: &Objective,
) -> Vec<f64> {
    let b = labels.len();
    let c = classes;
    let smoothing = objective.label_smoothing;
    let label_weight = (1.0 - smoothing) / b as f32;
    let spread_weight = smoothing / (b * c) as f32;
    let mut losses = vec![0.0f64; b];
    logits
        .par_chunks_mut(c)
        .zip(losses.par_iter_mut())
        .zip(labels.par_iter())
        .for_each(|((row, loss), &label)| {
            if let Some(bias) = objective.logit_bias {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
            let label = label as usize;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let shifted_label = row[label] - max;
            // One exponential per class: the row becomes exp(v - max).
            let (mut sum_shifted, mut sum_exp) = (0.0f32, 0.0f32);
            for v in row.iter_mut() {
                let shifted = *v - max;
                sum_shifted += shifted;
                *v = shifted.exp();
                sum_exp += *v;
            }
            let log_sum = sum_exp.ln();
            // loss = sum_c g_c log p_c with g_c = dloss/dlog p_c = -spread -
            // [c = label] label_weight; dlogit_c = g_c - p_c sum(g).
            *loss = label_weight as f64 * (log_sum - shifted_label) as f64
                + spread_weight as f64 * (c as f32 * log_sum - sum_shifted) as f64;
            let scale = (label_weight + spread_weight * c as f32) / sum_exp;
            for v in row.iter_mut() {
                *v = *v * scale - spread_weight;
            }
            row[label] -= label_weight;
        });
    losses
}

/// Column sums of a row-major `(rows, cols)` matrix.
pub(crate) fn column_sums(x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; cols];
    for row in x.chunks_exact(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    out
}

/// Dot product.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: the compiler vectorises this form.
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: &dyn Fn(usize, usize) -> f32,
        b: &dyn Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a(i, l) * b(l, j)).sum();
            }
        }
        out
    }

    #[test]
    fn strided_products_match_the_definition() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..40).map(|i| (i as f32 * 0.31).sin()).collect();
        let b: Vec<f32> = (0..40).map(|i| (i as f32 * 0.17).cos()).collect();
        // a as the transpose of a (k x m) block at offset 2 with row stride 6.
        let av = View::strided(&a, 2, 6).t();
        let bv = View::strided(&b, 1, 8);
        let expected = naive(m, n, k, &|i, l| a[2 + l * 6 + i], &|l, j| b[1 + l * 8 + j]);
        let mut dst = vec![1.0; 3 + m * 9];
        matmul(m, n, k, &mut dst, 3, 9, false, av, bv, Parallelism::None);
        for i in 0..m {
            for j in 0..n {
                assert!((dst[3 + i * 9 + j] - expected[i * n + j]).abs() < 1e-5);
            }
        }
        matmul(m, n, k, &mut dst, 3, 9, true, av, bv, Parallelism::None);
        assert!((dst[3] - 2.0 * expected[0]).abs() < 1e-5);
        assert_eq!(dst[0], 1.0, "outside the destination block");
    }

    /// Split over threads by rows (tall outputs) or by columns (wide ones),
    /// a product equals the single-threaded one.
    #[test]
    fn products_split_over_threads_equal_one_thread() {
        for (m, n, k) in [(70, 9, 13), (9, 70, 13), (33, 33, 5)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.13).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.29).cos()).collect();
            let (av, bv) = (View::rows(&a, k), View::rows(&b, n));
            let mut one = vec![0.0; m * n + 5];
            matmul(m, n, k, &mut one, 5, n, false, av, bv, Parallelism::None);
            for threads in [2, 3, 8] {
                let mut split = vec![0.0; m * n + 5];
                matmul(
                    m,
                    n,
                    k,
                    &mut split,
                    5,
                    n,
                    false,
                    av,
                    bv,
                    Parallelism::Rayon(threads),
                );
                assert_eq!(split, one, "{m} x {n} x {k} on {threads} threads");
            }
        }
    }
}
