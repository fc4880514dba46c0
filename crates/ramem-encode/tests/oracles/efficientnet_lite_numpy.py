#!/usr/bin/env python3
"""Independent numpy forward pass of EfficientNet-Lite0/1/2 (a test oracle).

Written for clarity, not speed, and deliberately structured differently from
an optimised port: batch norm stays a separate step (never folded into the
conv weights), convolutions are im2col + einsum / matmul, the depthwise
convolution is a plain loop over kernel offsets, and the arithmetic runs in
float64 by default (``--dtype float32`` to match a float32 port's rounding).

The network, read entirely from the state dict (see ``torch_legacy.py``):

* stem: conv 3x3 stride 2 (``_conv_stem``) -> BN (``_bn0``) -> ReLU6
* MBConv blocks ``_blocks.N``: [1x1 expand conv ``_expand_conv`` -> BN ``_bn0``
  -> ReLU6, absent when the expand ratio is 1] -> depthwise kxk conv with the
  stage stride ``_depthwise_conv`` -> BN ``_bn1`` -> ReLU6 -> 1x1 project conv
  ``_project_conv`` -> BN ``_bn2`` (linear) -> + input when stride 1 and the
  channel counts match. No squeeze-and-excite.
* stages: a new stage begins where the project conv's output channel count
  changes; there must be 7, with strides [1, 2, 2, 2, 1, 2, 1] carried by the
  first block of each stage.
* head: 1x1 conv ``_conv_head`` -> BN ``_bn1`` -> ReLU6 -> global average pool
  = the 1280-d embedding; ``_fc`` linear -> 1000 logits.

Padding is TensorFlow "SAME": per spatial axis
``pad_total = max((ceil(H/s) - 1) * s + k - H, 0)``, ``pad_before =
pad_total // 2``, ``pad_after = pad_total - pad_before`` (asymmetric for
stride 2 on even sizes). Batch norm (inference): ``(x - mean) / sqrt(var +
1e-3) * weight + bias``.

CLI (used by ramem's Rust tests)::

    python3 efficientnet_lite_numpy.py --weights FILE.pth --pixels PIX.npy \\
        --out-embedding EMB.npy --out-logits LOG.npy

PIX.npy is float32 (N, 3, H, W), already preprocessed ((pixel - 127) / 128);
the outputs are float32 (N, 1280) and (N, 1000).

Self-check on a real photo (needs Pillow, e.g. in a throw-away venv)::

    python3 efficientnet_lite_numpy.py --weights FILE.pth --selfcheck chelsea.png \\
        [--expect-top1 281,282,283,284,285] [--out-pixels PIX.npy]

Check the vectorised convolutions against a naive loop::

    python3 efficientnet_lite_numpy.py --test-primitives
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_legacy import load_state_dict  # noqa: E402

BN_EPS = 1e-3
STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]

# Input resolution of each variant, keyed by (number of blocks, channels of the
# last stage); only used to preprocess a photo for --selfcheck.
RESOLUTIONS = {(16, 320): ("efficientnet-lite0", 224),
               (21, 320): ("efficientnet-lite1", 240),
               (21, 352): ("efficientnet-lite2", 260)}


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) for one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """Zero-pad an NCHW array for a SAME convolution."""
    top, bottom = same_padding(x.shape[2], kernel, stride)
    left, right = same_padding(x.shape[3], kernel, stride)
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def output_size(size: int, stride: int) -> int:
    return math.ceil(size / stride)


def conv2d_same(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Dense convolution, SAME padding, no bias, via im2col + einsum.

    x: (N, C, H, W); w: (O, C, k, k) -> (N, O, ceil(H/s), ceil(W/s)).
    """
    n, c, h, wd = x.shape
    o, c2, k, k2 = w.shape
    assert c == c2 and k == k2, (x.shape, w.shape)
    ho, wo = output_size(h, stride), output_size(wd, stride)
    xp = pad_same(x, k, stride)
    # cols[n, c, i, j, y, x] = xp[n, c, y*s + i, x*s + j]
    cols = np.empty((n, c, k, k, ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
    return np.einsum("ncijyx,ocij->noyx", cols, w, optimize=True)


def conv1x1(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pointwise convolution: (N, C, H, W) x (O, C, 1, 1) -> (N, O, H, W)."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    assert w.shape == (o, c, 1, 1), (x.shape, w.shape)
    y = np.matmul(w[:, :, 0, 0], x.reshape(n, c, h * wd))  # (N, O, H*W)
    return y.reshape(n, o, h, wd)


def depthwise_conv_same(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Depthwise convolution (one filter per channel), SAME padding, no bias.

    x: (N, C, H, W); w: (C, 1, k, k). A direct loop over the k*k offsets.
    """
    n, c, h, wd = x.shape
    k = w.shape[2]
    assert w.shape == (c, 1, k, k), (x.shape, w.shape)
    ho, wo = output_size(h, stride), output_size(wd, stride)
    xp = pad_same(x, k, stride)
    out = np.zeros((n, c, ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            window = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            out += window * w[:, 0, i, j][None, :, None, None]
    return out


def batch_norm(x: np.ndarray, bn: dict[str, np.ndarray]) -> np.ndarray:
    """Inference batch norm over the channel axis of an NCHW array."""
    shape = (1, -1, 1, 1)
    mean = bn["running_mean"].reshape(shape)
    var = bn["running_var"].reshape(shape)
    gamma = bn["weight"].reshape(shape)
    beta = bn["bias"].reshape(shape)
    return (x - mean) / np.sqrt(var + BN_EPS) * gamma + beta


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


@dataclass
class Block:
    index: int
    stage: int
    stride: int
    in_channels: int
    out_channels: int
    kernel: int
    expand: np.ndarray | None   # (hidden, in, 1, 1) or None
    bn_expand: dict | None
    depthwise: np.ndarray       # (hidden, 1, k, k)
    bn_depthwise: dict
    project: np.ndarray         # (out, hidden, 1, 1)
    bn_project: dict

    @property
    def skip(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


class EfficientNetLite:
    def __init__(self, state: dict[str, np.ndarray], dtype=np.float64):
        self.dtype = np.dtype(dtype)
        self._state = state
        self._used: set[str] = set()

        self.stem = self._take("_conv_stem.weight")
        self.bn_stem = self._bn("_bn0")
        self.blocks = self._parse_blocks()
        self.head = self._take("_conv_head.weight")
        self.bn_head = self._bn("_bn1")
        self.fc_weight = self._take("_fc.weight")
        self.fc_bias = self._take("_fc.bias")

        leftover = sorted(k for k in state
                          if k not in self._used and not k.endswith(".num_batches_tracked"))
        if leftover:
            raise ValueError(f"state dict has entries this model does not use: {leftover[:8]}")

    # -- reading the state dict ------------------------------------------

    def _take(self, key: str) -> np.ndarray:
        if key not in self._state:
            raise KeyError(f"missing weight {key!r}")
        self._used.add(key)
        return np.asarray(self._state[key], dtype=self.dtype)

    def _bn(self, prefix: str) -> dict[str, np.ndarray]:
        return {p: self._take(f"{prefix}.{p}")
                for p in ("weight", "bias", "running_mean", "running_var")}

    def _parse_blocks(self) -> list[Block]:
        ids = sorted({int(m.group(1)) for k in self._state
                      if (m := re.match(r"_blocks\.(\d+)\.", k))})
        if ids != list(range(len(ids))) or not ids:
            raise ValueError(f"block indices are not 0..n-1: {ids}")

        raw = []
        for b in ids:
            p = f"_blocks.{b}."
            if p + "_expand_conv.weight" in self._state:
                expand, bn_expand = self._take(p + "_expand_conv.weight"), self._bn(p + "_bn0")
            else:
                expand, bn_expand = None, None
            dw = self._take(p + "_depthwise_conv.weight")
            proj = self._take(p + "_project_conv.weight")
            in_ch = expand.shape[1] if expand is not None else dw.shape[0]
            raw.append((b, expand, bn_expand, dw, self._bn(p + "_bn1"), proj,
                        self._bn(p + "_bn2"), in_ch))

        # Stage boundaries: where the project conv's output channels change.
        stages: list[int] = []
        stage = -1
        prev_out = None
        for (_, _, _, _, _, proj, _, _) in raw:
            if proj.shape[0] != prev_out:
                stage += 1
                prev_out = proj.shape[0]
            stages.append(stage)
        if stage + 1 != len(STAGE_STRIDES):
            raise ValueError(f"found {stage + 1} stages, expected {len(STAGE_STRIDES)}")

        blocks = []
        for i, (b, expand, bn_expand, dw, bn_dw, proj, bn_proj, in_ch) in enumerate(raw):
            first_in_stage = i == 0 or stages[i] != stages[i - 1]
            stride = STAGE_STRIDES[stages[i]] if first_in_stage else 1
            blocks.append(Block(b, stages[i], stride, in_ch, proj.shape[0], dw.shape[2],
                                expand, bn_expand, dw, bn_dw, proj, bn_proj))
        # Consistency: each block's input is the previous block's output.
        prev = self.stem.shape[0]
        for blk in blocks:
            if blk.in_channels != prev:
                raise ValueError(f"block {blk.index} takes {blk.in_channels} channels, "
                                 f"previous layer gives {prev}")
            prev = blk.out_channels
        if self.head_in_channels_hint() not in (None, prev):
            raise ValueError("head conv input channels do not match the last block")
        return blocks

    def head_in_channels_hint(self):
        w = self._state.get("_conv_head.weight")
        return None if w is None else w.shape[1]

    def variant(self) -> tuple[str, int] | None:
        return RESOLUTIONS.get((len(self.blocks), self.blocks[-1].out_channels))

    def describe(self) -> str:
        lines = []
        for blk in self.blocks:
            lines.append(f"block {blk.index:2d} stage {blk.stage} stride {blk.stride} "
                         f"k {blk.kernel} {blk.in_channels:4d}->"
                         f"{blk.depthwise.shape[0]:4d}->{blk.out_channels:4d}"
                         f"{' expand' if blk.expand is not None else ''}"
                         f"{' skip' if blk.skip else ''}")
        return "\n".join(lines)

    # -- forward -----------------------------------------------------------

    def block_forward(self, blk: Block, x: np.ndarray) -> np.ndarray:
        h = x
        if blk.expand is not None:
            h = relu6(batch_norm(conv1x1(h, blk.expand), blk.bn_expand))
        h = relu6(batch_norm(depthwise_conv_same(h, blk.depthwise, blk.stride), blk.bn_depthwise))
        h = batch_norm(conv1x1(h, blk.project), blk.bn_project)
        if blk.skip:
            h = h + x
        return h

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """pixels (N, 3, H, W) preprocessed -> (embedding (N, 1280), logits (N, 1000))."""
        x = np.asarray(pixels, dtype=self.dtype)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W), got {x.shape}")
        x = relu6(batch_norm(conv2d_same(x, self.stem, stride=2), self.bn_stem))
        for blk in self.blocks:
            x = self.block_forward(blk, x)
        x = relu6(batch_norm(conv1x1(x, self.head), self.bn_head))
        embedding = x.mean(axis=(2, 3))
        logits = embedding @ self.fc_weight.T + self.fc_bias
        return embedding, logits


def _naive_conv(x, w, stride, groups):
    """Per-output-pixel reference convolution with SAME padding (slow)."""
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    (top, _), (left, _) = same_padding(h, k, stride), same_padding(wd, k, stride)
    ho, wo = output_size(h, stride), output_size(wd, stride)
    out = np.zeros((n, o, ho, wo))
    opg = o // groups
    for oc in range(o):
        g = oc // opg
        for y in range(ho):
            for xx in range(wo):
                acc = np.zeros(n)
                for ci in range(cg):
                    for i in range(k):
                        for j in range(k):
                            r, q = y * stride + i - top, xx * stride + j - left
                            if 0 <= r < h and 0 <= q < wd:
                                acc += x[:, g * cg + ci, r, q] * w[oc, ci, i, j]
                out[:, oc, y, xx] = acc
    return out


def test_primitives() -> int:
    """Check the vectorised convolutions against a naive loop on small inputs."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for h, wd in [(7, 7), (8, 6), (5, 9)]:
        for k in (1, 3, 5):
            for s in (1, 2):
                x = rng.standard_normal((2, 3, h, wd))
                w = rng.standard_normal((4, 3, k, k))
                worst = max(worst, abs(conv2d_same(x, w, s) - _naive_conv(x, w, s, 1)).max())
                dw = rng.standard_normal((3, 1, k, k))
                worst = max(worst, abs(depthwise_conv_same(x, dw, s)
                                       - _naive_conv(x, dw, s, 3)).max())
                if k == 1 and s == 1:
                    worst = max(worst, abs(conv1x1(x, w) - _naive_conv(x, w, 1, 1)).max())
    assert same_padding(224, 3, 2) == (0, 1) and same_padding(112, 5, 2) == (1, 2)
    assert same_padding(7, 3, 2) == (1, 1) and same_padding(14, 3, 1) == (1, 1)
    ok = worst < 1e-9
    print(f"primitives: max abs diff vs naive loop {worst:.2e} -> {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


# --------------------------------------------------------------------------
# Self-check on a real photo
# --------------------------------------------------------------------------


def preprocess_photo(path: str, resolution: int) -> np.ndarray:
    """Short side to resolution/0.875 (bicubic), centre crop, (x - 127) / 128."""
    try:
        from PIL import Image
    except ImportError:
        raise SystemExit("--selfcheck needs Pillow: run it inside a venv with "
                         "`pip install pillow numpy`") from None
    img = Image.open(path).convert("RGB")
    short = int(round(resolution / 0.875))
    w, h = img.size
    if w <= h:
        nw, nh = short, int(round(h * short / w))
    else:
        nw, nh = int(round(w * short / h)), short
    img = img.resize((nw, nh), Image.BICUBIC)
    left = (nw - resolution) // 2
    top = (nh - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    arr = (arr - 127.0) / 128.0
    return arr.transpose(2, 0, 1)[None].astype(np.float32)


def selfcheck(model: EfficientNetLite, args) -> int:
    var = model.variant()
    resolution = args.resolution or (var[1] if var else 224)
    print(f"model: {var[0] if var else 'unknown variant'}, resolution {resolution}")
    pixels = preprocess_photo(args.selfcheck, resolution)
    if args.out_pixels:
        np.save(args.out_pixels, pixels)
    t0 = time.perf_counter()
    emb, logits = model.forward(pixels)
    dt = time.perf_counter() - t0
    z = logits[0] - logits[0].max()
    prob = np.exp(z) / np.exp(z).sum()
    top5 = np.argsort(-logits[0])[:5]
    print(f"{args.selfcheck}: forward {dt:.2f}s, embedding norm {np.linalg.norm(emb[0]):.4f}")
    for r, c in enumerate(top5, 1):
        print(f"  top{r}: class {c:4d}  logit {logits[0, c]:8.4f}  p {prob[c]:.4f}")
    if args.expect_top1:
        allowed = {int(s) for s in args.expect_top1.split(",")}
        if int(top5[0]) not in allowed:
            print(f"FAIL: top-1 {top5[0]} not in {sorted(allowed)}", file=sys.stderr)
            return 1
        print(f"OK: top-1 {top5[0]} in {sorted(allowed)}")
    return 0


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help="legacy .pth state dict")
    ap.add_argument("--test-primitives", action="store_true",
                    help="check the convolutions against a naive loop, then exit")
    ap.add_argument("--pixels", help="float32 (N, 3, H, W) .npy, preprocessed")
    ap.add_argument("--out-embedding", help="write float32 (N, 1280) .npy")
    ap.add_argument("--out-logits", help="write float32 (N, 1000) .npy")
    ap.add_argument("--batch", type=int, default=4, help="images per forward call")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                    help="arithmetic precision (outputs are always float32)")
    ap.add_argument("--describe", action="store_true", help="print the parsed block table")
    ap.add_argument("--selfcheck", metavar="IMAGE", help="classify a photo (needs Pillow)")
    ap.add_argument("--expect-top1", help="comma-separated class ids allowed as top-1")
    ap.add_argument("--resolution", type=int, help="selfcheck input size (default by variant)")
    ap.add_argument("--out-pixels", help="selfcheck: save the preprocessed pixels")
    args = ap.parse_args(argv)
    if args.test_primitives:
        return test_primitives()
    if not args.weights:
        ap.error("--weights is required")

    model = EfficientNetLite(load_state_dict(args.weights), dtype=np.dtype(args.dtype))
    if args.describe:
        print(model.describe())
    if args.selfcheck:
        return selfcheck(model, args)
    if not args.pixels:
        if args.describe:
            return 0
        ap.error("--pixels is required (or --selfcheck IMAGE)")
    if not (args.out_embedding or args.out_logits):
        ap.error("give --out-embedding and/or --out-logits")

    pixels = np.load(args.pixels)
    if pixels.dtype != np.float32 or pixels.ndim != 4 or pixels.shape[1] != 3:
        print(f"error: {args.pixels} must be float32 (N, 3, H, W), got {pixels.dtype} "
              f"{pixels.shape}", file=sys.stderr)
        return 1
    embs, logits = [], []
    for s in range(0, pixels.shape[0], max(args.batch, 1)):
        e, l = model.forward(pixels[s:s + args.batch])
        embs.append(e)
        logits.append(l)
    n = pixels.shape[0]
    emb = (np.concatenate(embs).astype(np.float32) if n
           else np.zeros((0, model.head.shape[0]), np.float32))
    log = (np.concatenate(logits).astype(np.float32) if n
           else np.zeros((0, model.fc_bias.shape[0]), np.float32))
    if args.out_embedding:
        np.save(args.out_embedding, emb)
    if args.out_logits:
        np.save(args.out_logits, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
