#!/usr/bin/env python3
"""The tables of scripts/memory_edits.sh: before/after top-1 of every model.

    scripts/memory_edits_table.py WORK_DIR
"""

import json
import os
import sys


def report(path):
    with open(os.path.join(path, "report.json")) as f:
        r = json.load(f)
    run = r["runs"][0]
    names = r["dataset"]["class_names"]
    return run, names


def fmt(v):
    return "-" if v is None else f"{v:.2f}"


def main():
    work = sys.argv[1]
    a = os.path.join(work, "a")
    if os.path.isdir(os.path.join(a, "after")):
        print("(a) 40% of the memory's labels wrong, then corrected with `memory relabel`\n")
        print("| model | values | top-1 noisy | top-1 corrected | change |")
        print("|---|---|---:|---:|---:|")
        for name in sorted(os.listdir(os.path.join(a, "after"))):
            before, _ = report(os.path.join(a, "before", name))
            after, _ = report(os.path.join(a, "after", name))
            method, values = name.split("-", 1)
            d = after["top1"] - before["top1"]
            print(f"| {method} | {values} | {fmt(before['top1'])} | {fmt(after['top1'])} | {d:+.2f} |")
        print()
    b = os.path.join(work, "b")
    if os.path.isdir(os.path.join(b, "after")):
        print("(b) Bag left out of training, then added to the memory with `memory add`\n")
        print("| model | values | top-1 before | top-1 after | Bag before | Bag after |")
        print("|---|---|---:|---:|---:|---:|")
        for name in sorted(os.listdir(os.path.join(b, "after"))):
            before, names_b = report(os.path.join(b, "before", name))
            after, names_a = report(os.path.join(b, "after", name))
            bag_b = before["per_class"][names_b.index("Bag")]
            bag_a = after["per_class"][names_a.index("Bag")]
            method, values = name.split("-", 1)
            print(
                f"| {method} | {values} | {fmt(before['top1'])} | {fmt(after['top1'])} "
                f"| {fmt(bag_b)} | {fmt(bag_a)} |"
            )


if __name__ == "__main__":
    main()
