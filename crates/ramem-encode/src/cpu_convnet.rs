//! The CPU engine for EfficientNet-style convolutional networks.
//!
//! Why not candle's convolutions on the CPU: they work in NCHW, materialise
//! every intermediate (convolution, bias, activation) as a new tensor, and run
//! depthwise convolutions as one small convolution per channel. This engine
//! instead
//! - keeps activations in NHWC, so a 1x1 convolution is one matrix product
//!   `(H*W, C_in) x (C_in, C_out)` and a depthwise convolution vectorises
//!   across channels;
//! - folds batch norm into the weights and fuses bias, ReLU6 and the residual
//!   add into the matrix product's stores ([`crate::cpu_kernels`]);
//! - runs one image per thread with reused scratch buffers, so a worker's
//!   activations stay in its core's cache and threads never synchronise
//!   inside the network (a single image uses all threads in the matrix products).

use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu_kernels::{
    dense, depthwise, matmul, AlignedVec, DenseWeights, DepthwiseGeometry, DepthwiseWeights,
    Epilogue,
};
use crate::efficientnet::{same_padding, FoldedConv, LiteLayers};

/// A dense convolution (1x1, or kxk through im2col) as a matrix product.
struct DenseConv {
    weights: DenseWeights,
    c_in: usize,
    kernel: usize,
    stride: usize,
}

impl DenseConv {
    fn new(conv: &FoldedConv) -> Self {
        let k2 = conv.kernel * conv.kernel;
        // [c_out, c_in, ky, kx] -> [(ky, kx, c_in), c_out], the im2col row order.
        let mut w = vec![0f32; k2 * conv.c_in * conv.c_out];
        for o in 0..conv.c_out {
            for ci in 0..conv.c_in {
                for t in 0..k2 {
                    w[(t * conv.c_in + ci) * conv.c_out + o] =
                        conv.weight[(o * conv.c_in + ci) * k2 + t];
                }
            }
        }
        Self {
            weights: DenseWeights::new(w, conv.bias.clone(), k2 * conv.c_in, conv.c_out),
            c_in: conv.c_in,
            kernel: conv.kernel,
            stride: conv.stride,
        }
    }

    fn c_out(&self) -> usize {
        self.weights.n
    }
}

fn depthwise_weights(conv: &FoldedConv) -> DepthwiseWeights {
    let k2 = conv.kernel * conv.kernel;
    // [c, 1, k, k] -> [k*k, c]
    let mut w = vec![0f32; k2 * conv.c_out];
    for c in 0..conv.c_out {
        for t in 0..k2 {
            w[t * conv.c_out + c] = conv.weight[c * k2 + t];
        }
    }
    DepthwiseWeights {
        weight: AlignedVec::from_slice(&w),
        bias: AlignedVec::from_slice(&conv.bias),
        channels: conv.c_out,
        kernel: conv.kernel,
        stride: conv.stride,
    }
}

struct CpuBlock {
    expand: Option<DenseConv>,
    depthwise: DepthwiseWeights,
    project: DenseConv,
    skip: bool,
}

/// EfficientNet-Lite ready to run on the CPU.
pub(crate) struct CpuConvNet {
    stem: DenseConv,
    blocks: Vec<CpuBlock>,
    head: DenseConv,
    /// `(embedding_dim, classes)` row-major.
    fc_weight: Vec<f32>,
    fc_bias: Vec<f32>,
    scratch_pool: std::sync::Mutex<Vec<Scratch>>,
}

/// Per-worker buffers, reused across images.
#[derive(Default)]
struct Scratch {
    a: AlignedVec,
    b: AlignedVec,
    c: AlignedVec,
    columns: AlignedVec,
    /// A fused block's expanded input rows for one band.
    expanded: AlignedVec,
    /// A fused block's depthwise output for one band.
    band: AlignedVec,
}

/// Scratch buffers taken from a network's pool, given back when dropped.
struct ScratchLease<'a>(Scratch, &'a CpuConvNet);

impl<'a> ScratchLease<'a> {
    fn new(net: &'a CpuConvNet, h: usize, w: usize) -> Self {
        ScratchLease(net.take_scratch(h, w), net)
    }
}

impl Drop for ScratchLease<'_> {
    fn drop(&mut self) {
        self.1.return_scratch(std::mem::take(&mut self.0));
    }
}

/// Floats each scratch buffer needs for one input size.
struct BufferSizes {
    activation: usize,
    columns: usize,
    expanded: usize,
    band: usize,
}

impl CpuConvNet {
    pub(crate) fn new(layers: &LiteLayers) -> Self {
        let dim = layers.head.c_out;
        let classes = layers.fc_bias.len();
        let mut fc_weight = vec![0f32; dim * classes];
        for o in 0..classes {
            for i in 0..dim {
                fc_weight[i * classes + o] = layers.fc_weight[o * dim + i];
            }
        }
        Self {
            stem: DenseConv::new(&layers.stem),
            blocks: layers
                .blocks
                .iter()
                .map(|b| CpuBlock {
                    expand: b.expand.as_ref().map(DenseConv::new),
                    depthwise: depthwise_weights(&b.depthwise),
                    project: DenseConv::new(&b.project),
                    skip: b.skip,
                })
                .collect(),
            head: DenseConv::new(&layers.head),
            fc_weight,
            fc_bias: layers.fc_bias.clone(),
            scratch_pool: Default::default(),
        }
    }

    /// Scratch buffers for an `h x w` input, reused from earlier calls when possible
    /// (fresh multi-megabyte buffers cost a page fault per 4 KiB on first touch).
    fn take_scratch(&self, h: usize, w: usize) -> Scratch {
        let sizes = self.buffer_sizes(h, w);
        let reused = self
            .scratch_pool
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop());
        let mut s = reused.unwrap_or_default();
        for (buffer, len) in [
            (&mut s.a, sizes.activation),
            (&mut s.b, sizes.activation),
            (&mut s.c, sizes.activation),
            (&mut s.columns, sizes.columns),
            (&mut s.expanded, sizes.expanded),
            (&mut s.band, sizes.band),
        ] {
            if buffer.len() < len {
                *buffer = AlignedVec::zeros(len);
            }
        }
        s
    }

    fn return_scratch(&self, scratch: Scratch) {
        if let Ok(mut pool) = self.scratch_pool.lock() {
            pool.push(scratch);
        }
    }

    fn embedding_dim(&self) -> usize {
        self.head.c_out()
    }

    /// The largest activation (in floats) and im2col buffer an `h x w` input needs.
    fn buffer_sizes(&self, h: usize, w: usize) -> BufferSizes {
        let (ho, _, _) = same_padding(h, self.stem.kernel, self.stem.stride);
        let (wo, _, _) = same_padding(w, self.stem.kernel, self.stem.stride);
        let mut sizes = BufferSizes {
            activation: (h * w * 3).max(ho * wo * self.stem.c_out()),
            columns: ho * wo * self.stem.weights.k,
            expanded: 0,
            band: 0,
        };
        let (mut h, mut w) = (ho, wo);
        for block in &self.blocks {
            let dw = &block.depthwise;
            let (ho, _, _) = same_padding(h, dw.kernel, dw.stride);
            let (wo, _, _) = same_padding(w, dw.kernel, dw.stride);
            if block.expand.is_some() {
                let (expanded, band) = band_buffer_sizes(dw, w, wo, dw.channels);
                sizes.expanded = sizes.expanded.max(expanded);
                sizes.band = sizes.band.max(band);
            } else {
                sizes.activation = sizes.activation.max(ho * wo * dw.channels);
            }
            sizes.activation = sizes.activation.max(ho * wo * block.project.c_out());
            (h, w) = (ho, wo);
        }
        sizes.activation = sizes.activation.max(h * w * self.head.c_out());
        sizes
    }

    /// Runs `n` images of `(3, h, w)` (CHW, contiguous); returns embeddings `(n, dim)`
    /// and logits `(n, classes)`, both row-major.
    pub(crate) fn forward(
        &self,
        pixels: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let dim = self.embedding_dim();
        let per_image = 3 * h * w;
        assert_eq!(
            pixels.len(),
            n * per_image,
            "pixel buffer does not hold n images"
        );
        let mut embedding = vec![0f32; n * dim];
        let threads = rayon::current_num_threads();
        if n > 1 && threads > 1 {
            // One contiguous run of images per worker, each with its own scratch buffers.
            let per_worker = n.div_ceil(threads);
            pixels
                .par_chunks(per_image * per_worker)
                .zip(embedding.par_chunks_mut(dim * per_worker))
                .for_each(|(images, outs)| {
                    let mut scratch = self.take_scratch(h, w);
                    for (image, out) in images.chunks(per_image).zip(outs.chunks_mut(dim)) {
                        self.forward_image(&mut scratch, image, h, w, out, Parallelism::None);
                    }
                    self.return_scratch(scratch);
                });
        } else {
            let mut scratch = self.take_scratch(h, w);
            let parallelism = if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            };
            for (image, out) in pixels.chunks(per_image).zip(embedding.chunks_mut(dim)) {
                self.forward_image(&mut scratch, image, h, w, out, parallelism);
            }
            self.return_scratch(scratch);
        }
        let logits = self.logits(&embedding, n);
        (embedding, logits)
    }

    /// Embeds `n` images of `(3, h, w)` one at a time across the threads,
    /// each image's pixels written by `pixels_of(i, buffer)` (CHW) just
    /// before it runs, so decoding, preprocessing and the network overlap
    /// and no batch-wide pixel buffer or barrier is needed. An image whose
    /// `pixels_of` fails is skipped with its reason. Returns one result per
    /// image: its embedding (`dim` floats) or the reason. The embeddings
    /// equal [`Self::forward`]'s for the same pixels.
    pub(crate) fn embed_each<F>(
        &self,
        n: usize,
        h: usize,
        w: usize,
        pixels_of: F,
    ) -> Vec<Result<Vec<f32>, String>>
    where
        F: Fn(usize, &mut [f32]) -> Result<(), String> + Sync,
    {
        let dim = self.embedding_dim();
        let threads = rayon::current_num_threads();
        let run = |scratch: &mut Scratch, pixels: &mut Vec<f32>, i: usize, par: Parallelism| {
            pixels_of(i, pixels)?;
            let mut out = vec![0f32; dim];
            self.forward_image(scratch, pixels, h, w, &mut out, par);
            Ok(out)
        };
        if n <= 1 || threads <= 1 {
            // One image uses every thread inside its matrix products.
            let par = if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            };
            let mut scratch = ScratchLease::new(self, h, w);
            let mut pixels = vec![0f32; 3 * h * w];
            return (0..n)
                .map(|i| run(&mut scratch.0, &mut pixels, i, par))
                .collect();
        }
        (0..n)
            .into_par_iter()
            .with_max_len(1)
            .map_init(
                || (ScratchLease::new(self, h, w), vec![0f32; 3 * h * w]),
                |(scratch, pixels), i| run(&mut scratch.0, pixels, i, Parallelism::None),
            )
            .collect()
    }

    /// The 1000-class logits of `n` embeddings (row-major), as
    /// [`Self::forward`] computes them.
    pub(crate) fn logits(&self, embedding: &[f32], n: usize) -> Vec<f32> {
        let (dim, classes) = (self.embedding_dim(), self.fc_bias.len());
        let mut logits = vec![0f32; n * classes];
        if n > 0 {
            matmul(
                n,
                classes,
                dim,
                embedding,
                &self.fc_weight,
                &mut logits,
                Parallelism::None,
            );
            for row in logits.chunks_mut(classes) {
                row.iter_mut().zip(&self.fc_bias).for_each(|(l, b)| *l += b);
            }
        }
        logits
    }

    fn forward_image(
        &self,
        s: &mut Scratch,
        image: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
        par: Parallelism,
    ) {
        // CHW -> HWC
        let hw = h * w;
        for (p, px) in s.a[..hw * 3].chunks_exact_mut(3).enumerate() {
            px[0] = image[p];
            px[1] = image[hw + p];
            px[2] = image[2 * hw + p];
        }
        // stem: im2col + matrix product
        let stem = &self.stem;
        let (ho, pt, _) = same_padding(h, stem.kernel, stem.stride);
        let (wo, pl, _) = same_padding(w, stem.kernel, stem.stride);
        let geometry = Im2col {
            h,
            w,
            c: stem.c_in,
            k: stem.kernel,
            stride: stem.stride,
            pad_top: pt,
            pad_left: pl,
            ho,
            wo,
        };
        geometry.unfold(&s.a, &mut s.columns);
        let rows = ho * wo;
        dense(
            rows,
            &s.columns,
            &stem.weights,
            Epilogue::Relu6,
            &mut s.b,
            par,
        );
        let (mut h, mut w) = (ho, wo);

        // `cur` holds the block input; `t1`, `t2` are temporaries.
        let mut cur = std::mem::take(&mut s.b);
        let mut t1 = std::mem::take(&mut s.a);
        let mut t2 = std::mem::take(&mut s.c);
        let mut channels = stem.c_out();
        let mut expanded = std::mem::take(&mut s.expanded);
        let mut band = std::mem::take(&mut s.band);
        for block in &self.blocks {
            let input = &cur[..h * w * channels];
            let (ho, wo) = match &block.expand {
                Some(_) => {
                    self.fused_block(block, input, h, w, &mut expanded, &mut band, &mut t1, par)
                }
                None => self.plain_block(block, input, h, w, &mut t2, &mut t1, par),
            };
            (h, w) = (ho, wo);
            std::mem::swap(&mut cur, &mut t1);
            channels = block.project.c_out();
        }
        s.expanded = expanded;
        s.band = band;
        let head = &self.head;
        let len = h * w * head.c_out();
        dense(
            h * w,
            &cur[..h * w * channels],
            &head.weights,
            Epilogue::Relu6,
            &mut t1,
            par,
        );
        out.fill(0.0);
        for px in t1[..len].chunks_exact(head.c_out()) {
            out.iter_mut().zip(px).for_each(|(o, v)| *o += v);
        }
        let inv = 1.0 / (h * w) as f32;
        out.iter_mut().for_each(|o| *o *= inv);
        s.a = t1;
        s.b = cur;
        s.c = t2;
    }
}

impl CpuConvNet {
    /// A block without expansion: depthwise over the whole image, then project.
    #[allow(clippy::too_many_arguments)]
    fn plain_block(
        &self,
        block: &CpuBlock,
        input: &[f32],
        h: usize,
        w: usize,
        dw_out: &mut [f32],
        out: &mut [f32],
        par: Parallelism,
    ) -> (usize, usize) {
        let dw = &block.depthwise;
        let g = geometry(dw, h, w, 0..h, None);
        let (ho, wo) = (g.ho, g.wo);
        depthwise(input, dw, &g, &mut dw_out[..ho * wo * dw.channels]);
        let p = &block.project;
        let len = ho * wo * p.c_out();
        let epilogue = if block.skip {
            Epilogue::Residual(&input[..len])
        } else {
            Epilogue::Linear
        };
        dense(
            ho * wo,
            &dw_out[..ho * wo * dw.channels],
            &p.weights,
            epilogue,
            &mut out[..len],
            par,
        );
        (ho, wo)
    }

    /// An expand -> depthwise -> project block, computed in bands of output rows
    /// so the wide expanded activation only ever exists a few rows at a time
    /// (in cache) instead of as a whole image in memory. Expanded rows shared by
    /// consecutive bands are kept, not recomputed.
    #[allow(clippy::too_many_arguments)]
    fn fused_block(
        &self,
        block: &CpuBlock,
        input: &[f32],
        h: usize,
        w: usize,
        expanded: &mut [f32],
        band: &mut [f32],
        out: &mut [f32],
        par: Parallelism,
    ) -> (usize, usize) {
        let (e, dw, p) = (
            block.expand.as_ref().expect("fused block expands"),
            &block.depthwise,
            &block.project,
        );
        let (c_in, c_exp, c_out) = (e.c_in, e.c_out(), p.c_out());
        let full = geometry(dw, h, w, 0..h, None);
        let (ho, wo) = (full.ho, full.wo);
        let band_rows = band_rows(dw, w, wo, c_exp);
        let mut held = 0..0; // image rows currently in `expanded`
        let mut oy0 = 0;
        while oy0 < ho {
            let oy1 = (oy0 + band_rows).min(ho);
            let need = full.rows_needed(dw.kernel, dw.stride, oy0..oy1);
            // Keep the rows this band shares with the previous one; expand the rest.
            let kept = need.start.max(held.start)..held.end.max(need.start);
            if !kept.is_empty() {
                let from =
                    (kept.start - held.start) * w * c_exp..(kept.end - held.start) * w * c_exp;
                expanded.copy_within(from, 0);
            }
            let fresh = kept.end.max(need.start)..need.end;
            let at = (fresh.start - need.start) * w * c_exp;
            dense(
                fresh.len() * w,
                &input[fresh.start * w * c_in..fresh.end * w * c_in],
                &e.weights,
                Epilogue::Relu6,
                &mut expanded[at..at + fresh.len() * w * c_exp],
                par,
            );
            held = need.clone();
            let g = geometry(dw, h, w, need.clone(), Some(oy0..oy1));
            let rows = (oy1 - oy0) * wo;
            depthwise(
                &expanded[..need.len() * w * c_exp],
                dw,
                &g,
                &mut band[..rows * c_exp],
            );
            let span = oy0 * wo * c_out..oy1 * wo * c_out;
            let epilogue = if block.skip {
                Epilogue::Residual(&input[span.clone()])
            } else {
                Epilogue::Linear
            };
            dense(
                rows,
                &band[..rows * c_exp],
                &p.weights,
                epilogue,
                &mut out[span],
                par,
            );
            oy0 = oy1;
        }
        (ho, wo)
    }
}

/// Geometry of a depthwise layer on an `h x w` image, for the input rows held
/// and the output rows wanted (all of them by default).
fn geometry(
    dw: &DepthwiseWeights,
    h: usize,
    w: usize,
    in_rows: std::ops::Range<usize>,
    out_rows: Option<std::ops::Range<usize>>,
) -> DepthwiseGeometry {
    let (ho, pad_top, _) = same_padding(h, dw.kernel, dw.stride);
    let (wo, pad_left, _) = same_padding(w, dw.kernel, dw.stride);
    DepthwiseGeometry {
        h,
        w,
        ho,
        wo,
        pad_top,
        pad_left,
        in_rows,
        out_rows: out_rows.unwrap_or(0..ho),
    }
}

/// Cache budgets for a fused block's temporaries (floats): the expanded input
/// rows of one band, and its depthwise output.
const EXPANDED_BUDGET: usize = 128 * 1024;
const BAND_BUDGET: usize = 64 * 1024;

/// Output rows per band of a fused block: as many as fit the cache budgets, at least one.
fn band_rows(dw: &DepthwiseWeights, w: usize, wo: usize, c_exp: usize) -> usize {
    let by_input = (EXPANDED_BUDGET / (w * c_exp)).saturating_sub(dw.kernel) / dw.stride + 1;
    let by_output = BAND_BUDGET / (wo * c_exp);
    by_input.min(by_output).max(1)
}

/// Floats a fused block's `expanded` and `band` buffers need.
fn band_buffer_sizes(dw: &DepthwiseWeights, w: usize, wo: usize, c_exp: usize) -> (usize, usize) {
    let rows = band_rows(dw, w, wo, c_exp);
    (
        (((rows - 1) * dw.stride + dw.kernel) * w * c_exp),
        rows * wo * c_exp,
    )
}

/// Geometry of a kxk convolution unfolded into rows `(ky, kx, c)` for a matrix product.
struct Im2col {
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
    ho: usize,
    wo: usize,
}

impl Im2col {
    fn unfold(&self, input: &[f32], columns: &mut [f32]) {
        let (k, c) = (self.k, self.c);
        let depth = k * k * c;
        for oy in 0..self.ho {
            for ox in 0..self.wo {
                let row = &mut columns[(oy * self.wo + ox) * depth..][..depth];
                for ky in 0..k {
                    let iy = (oy * self.stride + ky) as isize - self.pad_top as isize;
                    for kx in 0..k {
                        let ix = (ox * self.stride + kx) as isize - self.pad_left as isize;
                        let dst = &mut row[(ky * k + kx) * c..][..c];
                        if iy < 0 || ix < 0 || iy >= self.h as isize || ix >= self.w as isize {
                            dst.fill(0.0);
                        } else {
                            dst.copy_from_slice(
                                &input[(iy as usize * self.w + ix as usize) * c..][..c],
                            );
                        }
                    }
                }
            }
        }
    }
}
