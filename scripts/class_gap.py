#!/usr/bin/env python3
"""Where one method's top-1 lead over another comes from, class by class.

Reads a study's report.json (per-class test top-1 of every run), the
evidence file of an attention-module run that covers every test image
(`evidence` at least the test split's size; the retrieved neighbours are
the same for every seed and method), and the memory's metadata.jsonl, and
prints, per seed and as a mean, the difference A - B in test top-1 within
groups of classes: by training images per class (as the memory holds them)
and by neighbour purity (the share of a test image's retrieved neighbours
that belong to its own class, averaged over the class's test images).
Labels are the parent folder of each `source` path (image-folder and Open
Clip Art data sets); class ids are the sorted label names, as `ramem study`
numbers them. Standard library only.

    python3 scripts/class_gap.py --report runs/openclipart-lt/report.json \
        --evidence DIR/evidence/mam-memory_train_values_image_k_16-seed0.jsonl \
        --metadata runs/openclipart-lt/memories/train/shard-000000/metadata.jsonl \
        --a mam --a-variant values=image --b tip_adapter_f
"""

import argparse
import json
import os
import statistics
import sys
from collections import Counter, defaultdict


def per_class_runs(report, method, variant):
    """{seed: per-class top-1} of the runs of `method` whose variant contains `variant`."""
    runs = {
        r["seed"]: r["per_class"]
        for r in report["runs"]
        if r["method"] == method and variant in r["variant"]
    }
    if not runs:
        sys.exit(f"no run of {method} with a variant containing {variant!r}")
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", required=True)
    ap.add_argument("--evidence", required=True)
    ap.add_argument("--metadata", required=True)
    ap.add_argument("--a", default="mam")
    ap.add_argument("--a-variant", default="")
    ap.add_argument("--b", default="tip_adapter_f")
    ap.add_argument("--b-variant", default="")
    args = ap.parse_args()

    report = json.load(open(args.report))
    with open(args.metadata) as f:
        train_count = Counter(os.path.dirname(json.loads(line)["source"]) for line in f)
    names = sorted(train_count)
    if len(names) != report["dataset"]["classes"]:
        sys.exit(
            f"{args.metadata}: {len(names)} labels, but the report has "
            f"{report['dataset']['classes']} classes"
        )
    purity = defaultdict(list)
    with open(args.evidence) as f:
        for line in f:
            e = json.loads(line)
            labels = [os.path.dirname(n["source"]) for n in e["neighbours"]]
            purity[e["label"]].append(sum(l == e["label"] for l in labels) / max(1, len(labels)))
    test_count = {n: len(purity[n]) for n in names}
    total = sum(test_count.values())
    if total != report["dataset"]["test"]:
        sys.exit(
            f"{args.evidence}: {total} test predictions, the report has "
            f"{report['dataset']['test']}; rerun with a larger `evidence`"
        )

    a = per_class_runs(report, args.a, args.a_variant)
    b = per_class_runs(report, args.b, args.b_variant)
    seeds = sorted(set(a) & set(b))
    mean_purity = {n: statistics.mean(purity[n]) for n in names}
    groups = [
        ("training images < 20", lambda n: train_count[n] < 20),
        ("training images 20-100", lambda n: 20 <= train_count[n] <= 100),
        ("training images > 100", lambda n: train_count[n] > 100),
        ("neighbour purity < 0.25", lambda n: mean_purity[n] < 0.25),
        ("neighbour purity 0.25-0.5", lambda n: 0.25 <= mean_purity[n] < 0.5),
        ("neighbour purity >= 0.5", lambda n: mean_purity[n] >= 0.5),
    ]
    print(f"{args.a} ({args.a_variant or '-'}) minus {args.b} ({args.b_variant or '-'}), "
          f"test top-1 points, seeds {seeds}")
    print()
    print("| classes | count | test images | difference, mean (per seed) | share of overall top-1 |")
    print("|---|---:|---:|---|---:|")
    for label, member in groups:
        ids = [i for i, n in enumerate(names) if member(n)]
        images = sum(test_count[names[i]] for i in ids)
        if images == 0:
            continue
        per_seed = [
            sum((a[s][i] - b[s][i]) * test_count[names[i]] for i in ids) / images
            for s in seeds
        ]
        mean = statistics.mean(per_seed)
        seeds_text = ", ".join(f"{x:+.2f}" for x in per_seed)
        print(f"| {label} | {len(ids)} | {images} | {mean:+.2f} ({seeds_text}) | "
              f"{mean * images / total:+.2f} |")


if __name__ == "__main__":
    main()
