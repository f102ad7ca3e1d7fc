"""Snakemake adapter: per-image CellProfiler features of one source (``real`` or a method) on one shard of the
test split."""

from cellresdm.features import FeatureSettings, extract_features
from cellresdm.logs import step_logging
from cellresdm.shards import store_shard_rows

with step_logging(snakemake.log[0]) as log:
    # segmentation keys (pixel size, bounds) come from the ground-truth section; features.segmentation overrides
    settings = FeatureSettings.from_config(
        dict(snakemake.params.settings), segmentation=dict(snakemake.params.segmentation)
    )
    extract_features(
        snakemake.input.images,
        snakemake.wildcards.source,
        snakemake.output.features,
        settings,
        cellprofiler=snakemake.params.segmentation["cellprofiler"],
        # the rule's threads (Snakemake scales them to the cores it has) decide how many CellProfiler processes run
        workers=max(int(snakemake.threads), 1),
        log=log,
        reference=snakemake.input.dataset,
        rows=store_shard_rows(snakemake.input.images, snakemake.wildcards.plate, snakemake.wildcards.shard),
    )
