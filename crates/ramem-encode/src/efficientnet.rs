//! EfficientNet-Lite0/1/2: the frozen image backbone.
//!
//! The network is read from the safetensors conversion of the PyTorch
//! checkpoints (key names `_conv_stem.weight`, `_blocks.N._depthwise_conv.weight`,
//! ...). Its layout (stages, channels, kernel sizes) is inferred from the
//! weights themselves, so the same code serves Lite0, Lite1 and Lite2.
//!
//! Facts that a faithful port needs: TensorFlow "SAME" padding (asymmetric on
//! stride-2 convolutions), batch-norm epsilon 1e-3 (folded into the
//! convolutions at load time), ReLU6, no squeeze-and-excite, stage strides
//! `[1, 2, 2, 2, 1, 2, 1]`, identity skips when stride is 1 and the shapes
//! match. The embedding is the global average of the head convolution's
//! output (after ReLU6).
//!
//! Two execution paths compute the same function:
//! - on the CPU, [`crate::cpu_convnet`] runs one image per thread in NHWC
//!   layout with fused bias/ReLU6 epilogues (the fast path);
//! - on any other candle device (CUDA), the network runs as candle tensor ops.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::cpu_convnet::CpuConvNet;

const BN_EPS: f32 = 1e-3;
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

/// Which EfficientNet-Lite network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteVariant {
    Lite0,
    Lite1,
    Lite2,
}

impl LiteVariant {
    /// Parses `efficientnet-lite0` (or `lite0`, `0`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name
            .trim_start_matches("efficientnet-")
            .trim_start_matches("lite")
        {
            "0" => Some(Self::Lite0),
            "1" => Some(Self::Lite1),
            "2" => Some(Self::Lite2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Lite0 => "efficientnet-lite0",
            Self::Lite1 => "efficientnet-lite1",
            Self::Lite2 => "efficientnet-lite2",
        }
    }

    pub fn index(self) -> u8 {
        match self {
            Self::Lite0 => 0,
            Self::Lite1 => 1,
            Self::Lite2 => 2,
        }
    }

    /// Input resolution the network was trained at.
    pub fn resolution(self) -> usize {
        match self {
            Self::Lite0 => 224,
            Self::Lite1 => 240,
            Self::Lite2 => 260,
        }
    }
}

/// A convolution with batch norm folded in: `weight` is `[c_out, c_in / groups, k, k]`.
#[derive(Debug, Clone)]
pub(crate) struct FoldedConv {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub c_out: usize,
    pub c_in: usize,
    pub kernel: usize,
    pub stride: usize,
    pub depthwise: bool,
}

/// One inverted-residual (MBConv) block.
#[derive(Debug, Clone)]
pub(crate) struct MbBlock {
    pub expand: Option<FoldedConv>,
    pub depthwise: FoldedConv,
    pub project: FoldedConv,
    pub skip: bool,
}

/// The whole network as folded convolutions.
#[derive(Debug, Clone)]
pub(crate) struct LiteLayers {
    pub stem: FoldedConv,
    pub blocks: Vec<MbBlock>,
    pub head: FoldedConv,
    /// `[classes, embedding_dim]`
    pub fc_weight: Vec<f32>,
    pub fc_bias: Vec<f32>,
}

/// Output of a forward pass.
#[derive(Debug)]
pub struct ImageOutput {
    /// `(N, 1280)` pooled embeddings, not normalised.
    pub embedding: Tensor,
    /// `(N, 1000)` ImageNet logits.
    pub logits: Tensor,
}

/// How to run the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The NHWC CPU engine (only on `Device::Cpu`).
    CpuEngine,
    /// Candle tensor operations on the model's device.
    Candle,
}

/// A loaded EfficientNet-Lite.
pub struct EfficientNetLite {
    variant: LiteVariant,
    device: Device,
    cpu: Option<CpuConvNet>,
    candle: CandleNet,
    embedding_dim: usize,
    classes: usize,
}

impl EfficientNetLite {
    /// Loads the network from a safetensors file converted from the PyTorch checkpoint.
    pub fn load(weights: &Path, variant: LiteVariant, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu)
            .with_context(|| format!("{}: cannot read safetensors weights", weights.display()))?;
        let layers = fold_layers(&tensors).with_context(|| {
            format!(
                "{}: weights do not describe an EfficientNet-Lite network",
                weights.display()
            )
        })?;
        let embedding_dim = layers.head.c_out;
        let classes = layers.fc_bias.len();
        let cpu = device.is_cpu().then(|| CpuConvNet::new(&layers));
        let candle = CandleNet::new(&layers, device)?;
        Ok(Self {
            variant,
            device: device.clone(),
            cpu,
            candle,
            embedding_dim,
            classes,
        })
    }

    pub fn variant(&self) -> LiteVariant {
        self.variant
    }

    pub fn resolution(&self) -> usize {
        self.variant.resolution()
    }

    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Embeds `n` images of `size x size` one at a time on the CPU engine,
    /// each written by `pixels_of(i, buffer)` (CHW, preprocessed) just
    /// before it runs: decoding, preprocessing and the network overlap
    /// across the threads. `None` when the model does not run on the CPU
    /// engine. One result per image: its embedding or why it could not be
    /// read; embeddings equal [`Self::forward`]'s.
    pub fn embed_each<F>(
        &self,
        n: usize,
        size: usize,
        pixels_of: F,
    ) -> Option<Vec<std::result::Result<Vec<f32>, String>>>
    where
        F: Fn(usize, &mut [f32]) -> std::result::Result<(), String> + Sync,
    {
        let engine = self.cpu.as_ref()?;
        Some(engine.embed_each(n, size, size, pixels_of))
    }

    /// The ImageNet logits of `n` embeddings from [`Self::embed_each`]
    /// (CPU engine only).
    pub fn logits_of(&self, embedding: &[f32], n: usize) -> Option<Vec<f32>> {
        Some(self.cpu.as_ref()?.logits(embedding, n))
    }

    /// Runs a batch of preprocessed images `(N, 3, H, W)` (f32, `(pixel - 127) / 128`).
    pub fn forward(&self, pixels: &Tensor) -> Result<ImageOutput> {
        let backend = if self.cpu.is_some() {
            Backend::CpuEngine
        } else {
            Backend::Candle
        };
        self.forward_with(pixels, backend)
    }

    /// Like [`Self::forward`], choosing the execution path (both compute the same function).
    pub fn forward_with(&self, pixels: &Tensor, backend: Backend) -> Result<ImageOutput> {
        let (n, c, h, w) = pixels
            .dims4()
            .context("pixels must be a (N, 3, H, W) tensor")?;
        if c != 3 {
            bail!("pixels have {c} channels; EfficientNet-Lite expects 3");
        }
        match backend {
            Backend::CpuEngine => {
                let engine = self
                    .cpu
                    .as_ref()
                    .context("the CPU engine is only available for models loaded on the CPU")?;
                let pixels = pixels
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .contiguous()?;
                // Read the tensor's memory in place: a batch is tens of megabytes.
                let (storage, layout) = pixels.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*storage else {
                    bail!("pixels are not in CPU memory");
                };
                let data = &cpu.as_slice::<f32>()?[layout.start_offset()..][..n * 3 * h * w];
                let (embedding, logits) = engine.forward(data, n, h, w);
                Ok(ImageOutput {
                    embedding: Tensor::from_vec(embedding, (n, self.embedding_dim), &self.device)?,
                    logits: Tensor::from_vec(logits, (n, self.classes), &self.device)?,
                })
            }
            Backend::Candle => self
                .candle
                .forward(&pixels.to_device(&self.device)?.to_dtype(DType::F32)?),
        }
    }
}

fn tensor_f32(tensors: &HashMap<String, Tensor>, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = tensors
        .get(name)
        .with_context(|| format!("missing tensor {name}"))?;
    let shape = t.dims().to_vec();
    let data = t
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
        .with_context(|| format!("reading tensor {name}"))?;
    Ok((data, shape))
}

/// Reads a conv weight and its batch norm and folds them.
fn fold_conv(
    tensors: &HashMap<String, Tensor>,
    conv: &str,
    bn: &str,
    stride: usize,
    depthwise: bool,
) -> Result<FoldedConv> {
    let (mut weight, shape) = tensor_f32(tensors, &format!("{conv}.weight"))?;
    if shape.len() != 4 || shape[2] != shape[3] {
        bail!("{conv}.weight has shape {shape:?}; expected [c_out, c_in, k, k]");
    }
    let (c_out, c_in_per_group, kernel) = (shape[0], shape[1], shape[2]);
    if depthwise && c_in_per_group != 1 {
        bail!("{conv}.weight has shape {shape:?}; a depthwise convolution has one input channel per group");
    }
    let (gamma, _) = tensor_f32(tensors, &format!("{bn}.weight"))?;
    let (beta, _) = tensor_f32(tensors, &format!("{bn}.bias"))?;
    let (mean, _) = tensor_f32(tensors, &format!("{bn}.running_mean"))?;
    let (var, _) = tensor_f32(tensors, &format!("{bn}.running_var"))?;
    for (what, v) in [
        ("weight", &gamma),
        ("bias", &beta),
        ("running_mean", &mean),
        ("running_var", &var),
    ] {
        if v.len() != c_out {
            bail!(
                "{bn}.{what} has {} entries; {conv} has {c_out} output channels",
                v.len()
            );
        }
    }
    let per_out = weight.len() / c_out;
    let mut bias = vec![0f32; c_out];
    for o in 0..c_out {
        let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
        weight[o * per_out..(o + 1) * per_out]
            .iter_mut()
            .for_each(|w| *w *= scale);
        bias[o] = beta[o] - mean[o] * scale;
    }
    Ok(FoldedConv {
        weight,
        bias,
        c_out,
        c_in: if depthwise { c_out } else { c_in_per_group },
        kernel,
        stride,
        depthwise,
    })
}

/// Reads all layers, inferring stages from where the block output width changes.
pub(crate) fn fold_layers(tensors: &HashMap<String, Tensor>) -> Result<LiteLayers> {
    let stem = fold_conv(tensors, "_conv_stem", "_bn0", 2, false)?;
    let block_count = (0..)
        .take_while(|i| tensors.contains_key(&format!("_blocks.{i}._depthwise_conv.weight")))
        .count();
    if block_count == 0 {
        bail!("no _blocks.N._depthwise_conv.weight tensors");
    }
    let mut blocks = Vec::with_capacity(block_count);
    let mut stage = 0usize;
    let mut prev_out = stem.c_out;
    let mut prev_block_out: Option<usize> = None;
    for i in 0..block_count {
        let p = format!("_blocks.{i}");
        let (_, project_shape) = tensor_f32(tensors, &format!("{p}._project_conv.weight"))?;
        let out = project_shape[0];
        let first_of_stage = match prev_block_out {
            None => true,
            Some(prev) if prev != out => {
                stage += 1;
                true
            }
            _ => false,
        };
        if stage >= STAGE_STRIDES.len() {
            bail!("more than {} stages", STAGE_STRIDES.len());
        }
        let stride = if first_of_stage {
            STAGE_STRIDES[stage]
        } else {
            1
        };
        let expand = if tensors.contains_key(&format!("{p}._expand_conv.weight")) {
            Some(fold_conv(
                tensors,
                &format!("{p}._expand_conv"),
                &format!("{p}._bn0"),
                1,
                false,
            )?)
        } else {
            None
        };
        let depthwise = fold_conv(
            tensors,
            &format!("{p}._depthwise_conv"),
            &format!("{p}._bn1"),
            stride,
            true,
        )?;
        let project = fold_conv(
            tensors,
            &format!("{p}._project_conv"),
            &format!("{p}._bn2"),
            1,
            false,
        )?;
        let block_in = expand.as_ref().map_or(depthwise.c_in, |e| e.c_in);
        if block_in != prev_out {
            bail!("{p} takes {block_in} channels but the previous layer gives {prev_out}");
        }
        if expand.as_ref().is_some_and(|e| e.c_out != depthwise.c_out)
            || project.c_in != depthwise.c_out
        {
            bail!("{p}: channel counts of expand/depthwise/project do not chain");
        }
        blocks.push(MbBlock {
            skip: stride == 1 && block_in == out,
            expand,
            depthwise,
            project,
        });
        prev_out = out;
        prev_block_out = Some(out);
    }
    if stage + 1 != STAGE_STRIDES.len() {
        bail!(
            "found {} stages; EfficientNet-Lite has {}",
            stage + 1,
            STAGE_STRIDES.len()
        );
    }
    let head = fold_conv(tensors, "_conv_head", "_bn1", 1, false)?;
    if head.c_in != prev_out {
        bail!(
            "_conv_head takes {} channels but the last block gives {prev_out}",
            head.c_in
        );
    }
    let (fc_weight, fc_shape) = tensor_f32(tensors, "_fc.weight")?;
    let (fc_bias, _) = tensor_f32(tensors, "_fc.bias")?;
    if fc_shape.len() != 2 || fc_shape[1] != head.c_out || fc_bias.len() != fc_shape[0] {
        bail!(
            "_fc has shape {fc_shape:?}; expected [classes, {}]",
            head.c_out
        );
    }
    Ok(LiteLayers {
        stem,
        blocks,
        head,
        fc_weight,
        fc_bias,
    })
}

/// TensorFlow "SAME" padding: output `ceil(input / stride)`, the odd pixel of padding at the end.
pub(crate) fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (out, total / 2, total - total / 2)
}

/// The network as candle tensors: runs on any candle device.
struct CandleNet {
    stem: CandleConv,
    blocks: Vec<(Option<CandleConv>, CandleConv, CandleConv, bool)>,
    head: CandleConv,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

struct CandleConv {
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    stride: usize,
    groups: usize,
}

impl CandleConv {
    fn new(conv: &FoldedConv, device: &Device) -> Result<Self> {
        let per_group = if conv.depthwise { 1 } else { conv.c_in };
        Ok(Self {
            weight: Tensor::from_vec(
                conv.weight.clone(),
                (conv.c_out, per_group, conv.kernel, conv.kernel),
                device,
            )?,
            bias: Tensor::from_vec(conv.bias.clone(), (1, conv.c_out, 1, 1), device)?,
            kernel: conv.kernel,
            stride: conv.stride,
            groups: if conv.depthwise { conv.c_out } else { 1 },
        })
    }

    fn forward(&self, x: &Tensor, relu6: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (_, top, bottom) = same_padding(h, self.kernel, self.stride);
        let (_, left, right) = same_padding(w, self.kernel, self.stride);
        let x = if top + bottom + left + right > 0 {
            x.pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?
        } else {
            x.clone()
        };
        let y = if self.groups > 1 {
            depthwise_by_taps(&x, &self.weight, self.kernel, self.stride)?
        } else {
            x.conv2d(&self.weight, 0, self.stride, 1, 1)?
        }
        .broadcast_add(&self.bias)?;
        Ok(if relu6 { y.clamp(0f32, 6f32)? } else { y })
    }
}

/// A depthwise convolution of the already padded `x` (N, C, H, W) with
/// `weight` (C, 1, k, k), written as k * k shifted, strided views of `x`
/// each scaled per channel and summed. candle's grouped `conv2d` runs one
/// convolution per group, thousands of small launches per image on a GPU;
/// this is a few operations per kernel tap on any device.
fn depthwise_by_taps(x: &Tensor, weight: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (out_h, out_w) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    // Per-tap weights as (k * k) rows of (1, C, 1, 1).
    let taps = weight.reshape((c, kernel * kernel))?.t()?.contiguous()?;
    let mut sum: Option<Tensor> = None;
    for dy in 0..kernel {
        for dx in 0..kernel {
            let view = x.narrow(2, dy, (out_h - 1) * stride + 1)?.narrow(
                3,
                dx,
                (out_w - 1) * stride + 1,
            )?;
            let view = every_nth(&every_nth(&view, 2, stride)?, 3, stride)?;
            let tap = taps.get(dy * kernel + dx)?.reshape((1, c, 1, 1))?;
            let term = view.broadcast_mul(&tap)?;
            sum = Some(match sum {
                Some(s) => (s + term)?,
                None => term,
            });
        }
    }
    let y = sum.context("a depthwise kernel of size 0")?;
    debug_assert_eq!(y.dims4()?, (n, c, out_h, out_w));
    Ok(y)
}

/// Every `step`-th element along `dim`, starting at the first; the
/// dimension's length must be `(m - 1) * step + 1` for some m.
fn every_nth(x: &Tensor, dim: usize, step: usize) -> Result<Tensor> {
    if step == 1 {
        return Ok(x.clone());
    }
    let len = x.dim(dim)?;
    let m = (len - 1) / step + 1;
    // Pad to m * step, view as (.., m, step, ..) and keep offset 0.
    let padded = x.pad_with_zeros(dim, 0, m * step - len)?;
    let mut shape = padded.dims().to_vec();
    shape[dim] = m;
    shape.insert(dim + 1, step);
    Ok(padded
        .reshape(shape)?
        .narrow(dim + 1, 0, 1)?
        .squeeze(dim + 1)?)
}

impl CandleNet {
    fn new(layers: &LiteLayers, device: &Device) -> Result<Self> {
        let classes = layers.fc_bias.len();
        Ok(Self {
            stem: CandleConv::new(&layers.stem, device)?,
            blocks: layers
                .blocks
                .iter()
                .map(|b| {
                    Ok((
                        b.expand
                            .as_ref()
                            .map(|e| CandleConv::new(e, device))
                            .transpose()?,
                        CandleConv::new(&b.depthwise, device)?,
                        CandleConv::new(&b.project, device)?,
                        b.skip,
                    ))
                })
                .collect::<Result<_>>()?,
            head: CandleConv::new(&layers.head, device)?,
            fc_weight: Tensor::from_vec(
                layers.fc_weight.clone(),
                (classes, layers.head.c_out),
                device,
            )?,
            fc_bias: Tensor::from_vec(layers.fc_bias.clone(), classes, device)?,
        })
    }

    fn forward(&self, pixels: &Tensor) -> Result<ImageOutput> {
        let mut x = self.stem.forward(pixels, true)?;
        for (expand, depthwise, project, skip) in &self.blocks {
            let input = x.clone();
            if let Some(e) = expand {
                x = e.forward(&x, true)?;
            }
            x = depthwise.forward(&x, true)?;
            x = project.forward(&x, false)?;
            if *skip {
                x = (x + input)?;
            }
        }
        let x = self.head.forward(&x, true)?;
        let embedding = x.mean((2, 3))?;
        let logits = embedding
            .matmul(&self.fc_weight.t()?)?
            .broadcast_add(&self.fc_bias)?;
        Ok(ImageOutput { embedding, logits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // stride 2, k 3 on 224: output 112, one pixel of padding at the end only.
        assert_eq!(same_padding(224, 3, 2), (112, 0, 1));
        // k 5, stride 2 on 28: (14-1)*2+5-28 = 3 -> 1 before, 2 after.
        assert_eq!(same_padding(28, 5, 2), (14, 1, 2));
        // stride 1 keeps size with symmetric padding.
        assert_eq!(same_padding(7, 3, 1), (7, 1, 1));
        // odd input, stride 2.
        assert_eq!(same_padding(15, 3, 2), (8, 1, 1));
    }

    #[test]
    fn depthwise_by_taps_matches_grouped_conv2d() {
        let device = Device::Cpu;
        for (kernel, stride, size) in [(3, 1, 9), (3, 2, 9), (5, 2, 12), (5, 1, 7), (3, 2, 10)] {
            let c = 6;
            let x = Tensor::randn(0f32, 1f32, (2, c, size, size + 1), &device).unwrap();
            let w = Tensor::randn(0f32, 1f32, (c, 1, kernel, kernel), &device).unwrap();
            let expected = x.conv2d(&w, 0, stride, 1, c).unwrap();
            let got = depthwise_by_taps(&x, &w, kernel, stride).unwrap();
            assert_eq!(
                got.dims(),
                expected.dims(),
                "k {kernel} s {stride} size {size}"
            );
            let diff: f32 = (got - expected)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(
                diff < 1e-4,
                "k {kernel} s {stride} size {size}: differs by {diff}"
            );
        }
    }

    #[test]
    fn variant_names() {
        assert_eq!(
            LiteVariant::from_name("efficientnet-lite1"),
            Some(LiteVariant::Lite1)
        );
        assert_eq!(LiteVariant::from_name("lite2"), Some(LiteVariant::Lite2));
        assert_eq!(LiteVariant::from_name("efficientnet-b0"), None);
    }
}
