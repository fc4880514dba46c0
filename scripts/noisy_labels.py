#!/usr/bin/env python3
"""Symmetric label noise for a memory, read from the outside (numpy only).

    scripts/noisy_labels.py MEMORY --rate 0.4 --seed 0 --out DIR

Reads the labels of every entry of MEMORY (its shards' labels.npy, in the
manifest's order; no edits may be applied yet) and writes DIR/ids.npy (every
entry id), DIR/clean.npy (the labels as they are) and DIR/noisy.npy (each
label replaced, with probability RATE, by another class drawn uniformly),
for `ramem memory relabel --ids DIR/ids.npy --labels DIR/noisy.npy`.
"""

import argparse
import json
import os

import numpy as np


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("memory")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(os.path.join(args.memory, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest.get("edits"):
        raise SystemExit(f"{args.memory}: already holds edits; start from an unedited memory")
    classes = len(manifest["labels"]["names"])
    parts = []
    for shard in manifest["shards"]:
        if not shard.get("labels"):
            raise SystemExit(f"{args.memory}: shard {shard['name']} has no labels")
        parts.append(np.load(os.path.join(args.memory, shard["name"], "labels.npy")))
    clean = np.concatenate([p.reshape(-1) for p in parts]).astype(np.int64)
    rng = np.random.default_rng(args.seed)
    flip = rng.random(len(clean)) < args.rate
    # Another class, uniformly: shift by 1..classes-1.
    shift = rng.integers(1, classes, size=len(clean))
    noisy = np.where(flip & (clean >= 0), (clean + shift) % classes, clean)
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "ids.npy"), np.arange(len(clean), dtype=np.int64))
    np.save(os.path.join(args.out, "clean.npy"), clean)
    np.save(os.path.join(args.out, "noisy.npy"), noisy)
    print(f"{args.out}: {int((noisy != clean).sum())} of {len(clean)} labels changed")


if __name__ == "__main__":
    main()
