#!/usr/bin/env bash
# Retrain the demo's one-pass methods and CellResDM with other training seeds and print the quality bars of every
# run and their spread (cellresdm quality-bars). Each seed runs in demo_seeds/seed{N}/ on the main run's data
# stages (copied from results/: the gallery, ground truth and datasets do not depend on train.seed), with config
# config.yaml + train.seed = N, methods METHODS, up to the image-quality and segmentation scores.
# Usage: scripts/demo_seeds.sh [SEED ...]   (default 1 2; run `make demo` first). Env: CORES, METHODS.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
seeds=("${@:-1}")
[ $# -gt 0 ] || seeds=(1 2)
methods=${METHODS:-"[cellresdm, unet, pix2pix, spade]"}
results=$(.venv/bin/python -c 'from cellresdm.results import DEFAULT_ROOT; print(DEFAULT_ROOT)')
[ -d "$results/datasets" ] || { echo "demo_seeds: run \`make demo\` first ($results/datasets is missing)" >&2; exit 2; }
data_stages=$(.venv/bin/python -c 'from cellresdm.results import data_stage_folders; print(*data_stage_folders())')
folders=("$results")
for seed in "${seeds[@]}"; do
    work=demo_seeds/seed$seed
    mkdir -p "$work/$results"
    for folder in $data_stages; do
        [ -e "$work/$results/$folder" ] || cp -a "$results/$folder" "$work/$results/$folder"
    done
    printf 'train: {seed: %s}\nmethods: %s\n' "$seed" "$methods" > "$work/seed.yaml"
    .venv/bin/snakemake --cores "${CORES:-2}" --rerun-incomplete --directory "$work" --snakefile Snakefile \
        --configfile "$repo/config.yaml" "$repo/$work/seed.yaml" --until image_quality segmentation_scores
    folders+=("$work/$results")
done
.venv/bin/cellresdm quality-bars "${folders[@]}"
