#!/usr/bin/env python3
"""A memory at the largest scale this machine holds: ramem's embedded search
(exact, HNSW) and the same memory on a Milvus-protocol server (milvus-lite),
recall@k against exact search and queries/s, with the time each step took.

The memory is N seeded clustered unit vectors (the law of ann_vs_faiss.py:
points around C random centres with Gaussian noise, L2-normalised; queries
from the same law), imported with f16 keys. Steps, each timed as a whole
process of the `ramem` binary (built with the milvus feature):

  1. `memory import` of the keys;
  2. `search` exact, Q queries, k 10: the ground truth;
  3. `index build` (HNSW, M 16, efConstruction 200), then `search --engine
     hnsw --ef E` for each E: recall@10 and queries/s;
  4. with --milvus: milvus-lite started on a free loopback port,
     `memory push` with a FLAT index and (--milvus-hnsw) with an HNSW one,
     `search` through each: recall@10 and queries/s.

    cargo build --release -p ramem --features milvus
    python3 benches/scale.py --n 1000000 --dim 384 --queries 1000 --milvus \\
        --work /tmp/ramem-scale --json-out scale.json

Queries/s here include the process's start and the memory's opening (a
fraction of a second, reported as `open_s` from a 1-query search), so they
are measured per batch of Q queries. Only numpy is needed (system python3).
"""

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_model():
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def clustered(path_keys, path_queries, n, q, dim, centres, spread, seed, chunk=100_000):
    """Writes n keys (f16) and q queries (f32) around `centres` unit centres."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)

    def draw(m):
        which = rng.integers(0, centres, m)
        v = c[which] + (spread / math.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v

    keys = np.lib.format.open_memmap(path_keys, mode="w+", dtype="<f2", shape=(n, dim))
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        keys[s:s + m] = draw(m).astype(np.float16)
    keys.flush()
    del keys
    np.save(path_queries, draw(q))


def run(args, env=None):
    """Runs ramem with `args`; returns seconds. Fails loudly."""
    started = time.perf_counter()
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if out.returncode != 0:
        log(out.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(args)}")
    return took


def recall(ids, truth, k):
    hits = 0
    for a, b in zip(ids.tolist(), truth.tolist()):
        hits += len(set(a[:k]) & set(b[:k]))
    return hits / (len(truth) * k)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--centres", type=int, default=10_000)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", default="32,64,128")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--no-hnsw", action="store_true", help="skip the embedded HNSW index")
    ap.add_argument("--milvus", action="store_true", help="also push to milvus-lite and search there")
    ap.add_argument("--milvus-hnsw", action="store_true", help="also an HNSW collection on milvus-lite")
    ap.add_argument("--milvus-lite", default=os.path.join(ROOT, "target/test-venv/bin/milvus-lite"))
    ap.add_argument("--ramem", default=os.path.join(ROOT, "target/release/ramem"))
    ap.add_argument("--work", default="/tmp/ramem-scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    a = ap.parse_args()

    os.makedirs(a.work, exist_ok=True)
    keys = os.path.join(a.work, f"keys-{a.n}x{a.dim}.npy")
    queries = os.path.join(a.work, f"queries-{a.queries}x{a.dim}.npy")
    memory = os.path.join(a.work, f"memory-{a.n}x{a.dim}")
    result = {"n": a.n, "dim": a.dim, "queries": a.queries, "k": a.k, "cpu": cpu_model(),
              "cores": os.cpu_count(), "steps": {}}
    steps = result["steps"]

    if not os.path.exists(keys):
        log(f"generating {a.n} x {a.dim} clustered keys")
        started = time.perf_counter()
        clustered(keys, queries, a.n, a.queries, a.dim, a.centres, a.spread, a.seed)
        steps["generate_s"] = time.perf_counter() - started
    if not os.path.exists(os.path.join(memory, "manifest.json")):
        shutil.rmtree(memory, ignore_errors=True)
        log("importing")
        steps["import_s"] = run([a.ramem, "memory", "import", "--memory", memory, "--keys", keys,
                                 "--key-encoder", "synthetic", "--key-dtype", "f16"])
    result["memory_bytes"] = dir_bytes(memory)

    one = os.path.join(a.work, "one.npy")
    np.save(one, np.load(queries)[:1])
    scratch = os.path.join(a.work, "ids.npy")
    result["open_s"] = run([a.ramem, "search", "--memory", memory, "--queries", one, "--k", str(a.k),
                            "--out", scratch])

    truth_path = os.path.join(a.work, "exact.npy")
    log("exact search")
    took = run([a.ramem, "search", "--memory", memory, "--queries", queries, "--k", str(a.k),
                "--out", truth_path])
    truth = np.load(truth_path)
    result["exact"] = {"seconds": took, "qps": a.queries / took}
    log(f"exact: {a.queries / took:.1f} q/s")

    def curve(name, memory_arg, efs, extra=()):
        points = []
        for ef in efs:
            args = [a.ramem, "search", "--memory", memory_arg, "--queries", queries, "--k", str(a.k),
                    "--out", scratch, *extra]
            if ef is not None:
                args += ["--ef", str(ef)]
            took = run(args)
            r = recall(np.load(scratch), truth, a.k)
            points.append({"ef": ef, "recall": r, "seconds": took, "qps": a.queries / took})
            log(f"{name} ef {ef}: recall@{a.k} {r:.4f}, {a.queries / took:.1f} q/s")
        return points

    efs = [int(e) for e in a.ef.split(",")]
    if not a.no_hnsw:
        log("building the HNSW index")
        build = run([a.ramem, "index", "build", "--memory", memory, "--m", str(a.m),
                     "--ef-construction", str(a.ef_construction)])
        result["hnsw"] = {"build_s": build,
                          "index_bytes": dir_bytes(os.path.join(memory, "index-hnsw")),
                          "curve": curve("hnsw", memory, efs, ["--engine", "hnsw"])}

    if a.milvus:
        port = free_port()
        data = os.path.join(a.work, "milvus-data")
        shutil.rmtree(data, ignore_errors=True)
        server = subprocess.Popen([a.milvus_lite, "server", "--data-dir", data, "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            env = dict(os.environ, RAMEM_MILVUS_TIMEOUT="3600")
            result["milvus"] = {}
            kinds = [("flat", [])] + ([("hnsw", ["--index-params",
                                                 f"M={a.m},efConstruction={a.ef_construction}"])]
                                      if a.milvus_hnsw else [])
            for kind, params in kinds:
                url = f"milvus://127.0.0.1:{port}/scale_{kind}"
                log(f"pushing to {url}")
                push = run([a.ramem, "memory", "push", "--memory", memory, "--to", url, "--index", kind,
                            *params, "--batch", "2000"], env=env)
                points = curve(f"milvus {kind}", url, efs if kind == "hnsw" else [None])
                result["milvus"][kind] = {"push_s": push, "curve": points}
            result["milvus"]["data_bytes"] = dir_bytes(data)
        finally:
            server.terminate()
            server.wait()

    text = json.dumps(result, indent=2)
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
