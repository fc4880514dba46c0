#!/usr/bin/env python3
"""Compares two study reports (report.json) run by run.

    scripts/compare_reports.py BEFORE/report.json AFTER/report.json [--params]

Runs are matched by (method, variant, seed). Every metric (top-1, top-5,
many/medium/few, per class, n) must be equal; with --params the selection
record (chosen hyper-parameters, validation figures) must be equal too.
Timings and the creation date are ignored. Prints each difference and exits
with 1 if there is any, 0 if the reports agree.
"""

import json
import sys

METRICS = ["top1", "top5", "many", "medium", "few", "per_class", "n"]
IGNORED_PARAMS = set()


def runs(path):
    with open(path) as f:
        report = json.load(f)
    out = {}
    for run in report["runs"]:
        key = (run["method"], run["variant"], run["seed"])
        if key in out:
            sys.exit(f"{path}: run {key} appears twice")
        out[key] = run
    return report, out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    with_params = "--params" in sys.argv[1:]
    if len(args) != 2:
        sys.exit(__doc__)
    (_, before), (_, after) = runs(args[0]), runs(args[1])
    problems = []
    for key in sorted(set(before) | set(after), key=str):
        if key not in after:
            problems.append(f"{key}: only in {args[0]}")
            continue
        if key not in before:
            problems.append(f"{key}: only in {args[1]}")
            continue
        a, b = before[key], after[key]
        for metric in METRICS:
            if a.get(metric) != b.get(metric):
                problems.append(f"{key} {metric}: {a.get(metric)} -> {b.get(metric)}")
        if with_params:
            pa, pb = a.get("params", {}), b.get("params", {})
            for name in sorted(set(pa) | set(pb)):
                if name not in IGNORED_PARAMS and pa.get(name) != pb.get(name):
                    problems.append(f"{key} params.{name}: {pa.get(name)} -> {pb.get(name)}")
    for line in problems:
        print(line)
    print(
        f"{len(before)} runs in {args[0]}, {len(after)} in {args[1]}: "
        + ("identical" if not problems else f"{len(problems)} differences")
    )
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
