#!/usr/bin/env bash
# What memory edits buy without retraining (docs/RESULTS.md, "Memory edits"):
#   (a) a memory whose labels are 40% wrong: train, correct the labels with
#       `ramem memory relabel`, evaluate again;
#   (b) a class the models never trained on (Bag): train without it, add its
#       images to the memory with `ramem memory add`, evaluate again.
# Every model trains on Fashion-MNIST-LT with the main job's config and seed 0
# (examples/fashion-mnist-lt.toml) and is evaluated on the Fashion-MNIST test
# split. Usage: scripts/memory_edits.sh [WORK_DIR] (default runs/memory-edits).
# Resumable: finished memories, models and reports are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
ramem=target/release/ramem
data='idx:/usr/share/datasets/fashion-mnist;names=fashion-mnist'
config=examples/fashion-mnist-lt.toml
work=${1:-runs/memory-edits}
mkdir -p "$work"

# The methods that can use an edit, and two that cannot, for reference.
variants=("knn_vote label" "mam image+label" "uniform_mean image+label" "mam label" "mam image" "linear_probe image")

train_and_score() { # memory, tag, extra train options...
  local memory=$1 tag=$2; shift 2
  for variant in "${variants[@]}"; do
    read -r method values <<<"$variant"
    local name="$method-$values" model="$work/$tag/models/$method-$values"
    [ -f "$model/model.json" ] || "$ramem" train --data "$data" --config "$config" \
      --memory "$memory" --method "$method" --values "$values" --out "$model" "$@"
  done
}

evaluate_all() { # tag, stage
  local tag=$1 stage=$2
  for model in "$work/$tag"/models/*/; do
    local out="$work/$tag/$stage/$(basename "$model")"
    [ -f "$out/report.json" ] || "$ramem" evaluate --model "$model" --data "$data" --out "$out"
  done
}

# The memories: every training image except Bag's, labelled; then with Bag's.
if [ ! -f "$work/without-bag/manifest.json" ]; then
  "$ramem" memory build --input "$data" --split train --skip-classes Bag --memory "$work/without-bag"
fi
if [ ! -f "$work/all-classes.done" ]; then
  rm -rf "$work/all-classes"
  cp -r "$work/without-bag" "$work/all-classes"
  "$ramem" memory add --memory "$work/all-classes" --input "$data" --only-classes Bag
  touch "$work/all-classes.done"
fi

# (a) Noisy memory labels, then corrected.
if [ ! -f "$work/noisy.done" ]; then
  rm -rf "$work/noisy"
  cp -r "$work/all-classes" "$work/noisy"
  python3 scripts/noisy_labels.py "$work/noisy" --rate 0.4 --seed 0 --out "$work/noisy-labels"
  "$ramem" memory relabel --memory "$work/noisy" --ids "$work/noisy-labels/ids.npy" \
    --labels "$work/noisy-labels/noisy.npy"
  touch "$work/noisy.done"
fi
if [ ! -f "$work/noisy-labels/corrected.done" ]; then
  train_and_score "$work/noisy" a
  evaluate_all a before
  "$ramem" memory relabel --memory "$work/noisy" --ids "$work/noisy-labels/ids.npy" \
    --labels "$work/noisy-labels/clean.npy"
  touch "$work/noisy-labels/corrected.done"
fi
evaluate_all a after

# (b) A class left out of training, then added to the memory.
if [ ! -f "$work/new-class.done" ]; then
  rm -rf "$work/new-class"
  cp -r "$work/without-bag" "$work/new-class"
  touch "$work/new-class.done"
fi
if [ ! -f "$work/new-class-added.done" ]; then
  train_and_score "$work/new-class" b --skip-classes Bag
  evaluate_all b before
  "$ramem" memory add --memory "$work/new-class" --input "$data" --only-classes Bag
  touch "$work/new-class-added.done"
fi
evaluate_all b after

python3 scripts/memory_edits_table.py "$work"
