#!/usr/bin/env python3
"""EfficientNet-Lite0 encoding on a GPU in PyTorch: the peer figure for
ramem's CUDA encoder.

ramem's side is the `lite0_encoding_rate_on_each_device` test of
crates/ramem-encode/tests/cuda.rs (a `--features cuda` build, docs/GPU.md):
batch 64 at 224 px, f32, the host-to-device copy of the pixels and the copy
of the 1280-d embeddings back included, 20 timed batches after one warm-up.
This script times the same loop with timm's `tf_efficientnet_lite0` (the
same network, TensorFlow "SAME" padding; random weights: speed does not
depend on them), on the same GPU in the same session:

    python3 benches/encode_cuda_vs_pytorch.py

It needs torch with CUDA and timm (both ship on the GPU machines used here);
ramem never depends on them. Prints one JSON line per precision: strict f32
(TF32 off, as ramem computes) and PyTorch's default (cuDNN may use TF32).
"""

import argparse
import json
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()

    import timm
    import torch

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).cuda().eval()
    pixels = torch.randn(args.batch, 3, 224, 224)
    for name, tf32 in (("f32", False), ("default", True)):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32

        def run():
            with torch.no_grad():
                x = pixels.cuda()
                # Global average of the head's output: the 1280-d embedding.
                embedding = model.forward_features(x).mean((2, 3))
                return embedding.cpu()

        run()
        started = time.perf_counter()
        for _ in range(args.rounds):
            out = run()
        seconds = time.perf_counter() - started
        assert tuple(out.shape) == (args.batch, 1280), out.shape
        print(json.dumps({
            "engine": "pytorch", "precision": name, "model": "tf_efficientnet_lite0", "batch": args.batch,
            "images_per_s": args.rounds * args.batch / seconds, "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__, "timm": timm.__version__,
        }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
