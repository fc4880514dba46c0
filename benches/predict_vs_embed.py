#!/usr/bin/env python3
"""`ramem predict` against `ramem embed` alone, side by side, and the
start-up time of `ramem predict` over a large memory.

Throughput: the first N Fashion-MNIST test images are written out as PNG
files; rounds alternate `ramem embed` (decode + encode + write the .npy) and
`ramem predict --jsonl` (decode + encode + retrieve + the module + the
evidence, written as JSON lines) over the same folder; whole-process wall
times, medians reported, and the ratio of images/s (predict / embed). The
retrieval cost is what the ratio shows: the encoder is the same.

Start-up (`--startup-rows R`): a memory of R entries is built once (cached
in the work directory) from the model's own memory, its keys repeated with
small seeded noise so that a search meets realistic neighbourhoods, and
imported with `ramem memory import`; `--startup-hnsw` also builds its HNSW
index. Then `ramem predict` classifies one image against it, several times:
the report gives the "ready in" time the command logs (bundle, memory,
index and encoder opened) and the whole-process time.

    cargo build --release -p ramem
    python3 benches/predict_vs_embed.py --model models/mam --startup-rows 1000000

numpy lives in a throw-away venv (default ~/.cache/ramem/bench-venv-numpy)
that this script creates and re-executes itself in; ramem never depends on
it. See benches/README.md.
"""

import argparse
import glob
import gzip
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib

import benchkit
from benchkit import cpu_model, log, median

CACHE = os.environ.get("RAMEM_HOME", os.path.expanduser("~/.cache/ramem"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_VENV_MARK = "RAMEM_PREDICT_BENCH_IN_VENV"


def write_png(path, width, height, rows):
    """An 8-bit greyscale PNG, from the standard library alone."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + r for r in rows)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n"
                 + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                 + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def export_test_images(idx_dir, out_dir, count):
    """The first `count` Fashion-MNIST test images as PNG files."""
    done = os.path.join(out_dir, ".complete")
    if os.path.exists(done) and len(glob.glob(os.path.join(out_dir, "*.png"))) == count:
        return
    os.makedirs(out_dir, exist_ok=True)
    for old in glob.glob(os.path.join(out_dir, "*.png")):
        os.remove(old)
    data = gzip.open(os.path.join(idx_dir, "t10k-images-idx3-ubyte.gz")).read()
    n, h, w = struct.unpack(">III", data[4:16])
    if count > n:
        sys.exit(f"--images {count}: the test split has {n} images")
    for i in range(count):
        off = 16 + i * h * w
        write_png(os.path.join(out_dir, f"{i:05d}.png"), w, h,
                  [data[off + r * w:off + (r + 1) * w] for r in range(h)])
    open(done, "w").close()


def timed(cmd, stdout=subprocess.DEVNULL):
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return seconds, proc.stderr


def ready_line(stderr):
    m = re.search(r"ready in ([0-9.]+) s: (.*)", stderr)
    if not m:
        sys.exit(f"`ramem predict` logged no start-up line:\n{stderr}")
    return float(m.group(1)), m.group(2).strip()


def model_memory(model):
    with open(os.path.join(model, "model.json")) as fh:
        meta = json.load(fh)
    if not meta.get("memory"):
        sys.exit(f"{model}: the model records no memory")
    return meta["memory"]["path"]


def build_large_memory(ramem, source_memory, rows, out, hnsw, seed, threads):
    """A memory of `rows` entries: the source memory's keys, repeated with
    small noise, imported into `out` (kept between runs)."""
    import numpy as np

    if os.path.exists(os.path.join(out, "manifest.json")):
        with open(os.path.join(out, "manifest.json")) as fh:
            if json.load(fh).get("count") == rows:
                if hnsw and not os.path.isdir(os.path.join(out, "index-hnsw")):
                    timed([ramem, "index", "build", "--memory", out, "--threads", str(threads)])
                return
        sys.exit(f"{out} holds another memory; remove it or choose another --workdir")
    shards = sorted(glob.glob(os.path.join(source_memory, "shard-*", "keys.npy")))
    if not shards:
        sys.exit(f"{source_memory}: no shard key files")
    base = np.concatenate([np.load(s).astype(np.float32) for s in shards])
    rng = np.random.default_rng(seed)
    keys_path = out + ".keys.npy"
    keys = np.lib.format.open_memmap(keys_path, mode="w+", dtype=np.float16,
                                     shape=(rows, base.shape[1]))
    chunk = 65536
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        picked = base[np.arange(start, start + n) % len(base)]
        noisy = picked + 0.02 * rng.standard_normal(picked.shape, dtype=np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        keys[start:start + n] = noisy.astype(np.float16)
    keys.flush()
    del keys
    log(f"importing {rows} entries into {out}")
    seconds, _ = timed([ramem, "memory", "import", "--memory", out, "--keys", keys_path,
                        "--image-values", keys_path, "--threads", str(threads)])
    log(f"imported in {seconds:.1f} s")
    os.remove(keys_path)
    if hnsw:
        seconds, _ = timed([ramem, "index", "build", "--memory", out, "--threads", str(threads)])
        log(f"HNSW index built in {seconds:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a model bundle from `ramem train`")
    ap.add_argument("--memory", help="the memory to predict with (default: the model's)")
    ap.add_argument("--ramem-bin", default=os.path.join(ROOT, "target/release/ramem"))
    ap.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--startup-rows", type=int, default=0,
                    help="also time start-up against a memory of this many entries")
    ap.add_argument("--startup-hnsw", action="store_true",
                    help="build the large memory's HNSW index and start up with it")
    ap.add_argument("--startup-runs", type=int, default=5)
    ap.add_argument("--workdir", default=os.path.join(CACHE, "bench-predict"))
    ap.add_argument("--venv", default=os.path.join(CACHE, "bench-venv-numpy"))
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if args.startup_rows:
        benchkit.ensure_venv_and_reexec(__file__, args.venv, ["numpy"], IN_VENV_MARK,
                                        args.threads)
    ramem = args.ramem_bin
    os.makedirs(args.workdir, exist_ok=True)
    images = os.path.join(args.workdir, f"fashion-mnist-test-{args.images}")
    export_test_images(args.idx, images, args.images)
    threads = ["--threads", str(args.threads)]
    memory = ["--memory", args.memory] if args.memory else []

    embed_s, predict_s, ready = [], [], None
    out_npy = os.path.join(args.workdir, "embed.npy")
    for r in range(args.rounds):
        for path in glob.glob(out_npy + "*"):
            os.remove(path)
        s, _ = timed([ramem, "embed", "--input", images, "--out", out_npy, "--batch", "32",
                      "--log", "warn", *threads])
        embed_s.append(s)
        with open(os.path.join(args.workdir, "predict.jsonl"), "w") as fh:
            s, err = timed([ramem, "predict", "--model", args.model, *memory, "--input", images,
                            "--jsonl", *threads], stdout=fh)
        predict_s.append(s)
        ready = ready_line(err)
        log(f"round {r + 1}: embed {s_fmt(embed_s[-1])}, predict {s_fmt(predict_s[-1])}")
    embed_rate = args.images / median(embed_s)
    predict_rate = args.images / median(predict_s)
    report = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "images": args.images,
        "model": args.model,
        "predict": ready[1],
        "embed_seconds": embed_s,
        "predict_seconds": predict_s,
        "embed_images_per_s": embed_rate,
        "predict_images_per_s": predict_rate,
        "ratio_predict_over_embed": predict_rate / embed_rate,
    }
    print(f"{args.images} images, {args.threads} threads, {cpu_model()}")
    print(f"  embed   {embed_rate:7.1f} images/s (median of {args.rounds})")
    print(f"  predict {predict_rate:7.1f} images/s: {predict_rate / embed_rate:.2f}x embed "
          f"({ready[1]})")

    if args.startup_rows:
        large = os.path.join(args.workdir, f"memory-{args.startup_rows}")
        build_large_memory(ramem, args.memory or model_memory(args.model), args.startup_rows,
                           large, args.startup_hnsw, 0, args.threads)
        one = sorted(glob.glob(os.path.join(images, "*.png")))[0]
        engine = ["--engine", "hnsw" if args.startup_hnsw else "exact"]
        ready_s, whole_s = [], []
        for _ in range(args.startup_runs):
            s, err = timed([ramem, "predict", "--model", args.model, "--memory", large,
                            "--input", one, *engine, *threads])
            whole_s.append(s)
            ready_s.append(ready_line(err)[0])
        report["startup"] = {
            "rows": args.startup_rows,
            "engine": engine[1],
            "ready_seconds": ready_s,
            "whole_process_seconds": whole_s,
        }
        print(f"  start-up over {args.startup_rows} entries ({engine[1]}): ready in "
              f"{median(ready_s):.3f} s, one image end to end {median(whole_s):.3f} s "
              f"(medians of {args.startup_runs})")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(report, fh, indent=2)


def s_fmt(seconds):
    return f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
