"""Snakemake adapter: train one StarDist nuclei baseline (params.source: stardist_bf or stardist_if)."""

from cellresdm.logs import step_logging
from cellresdm.stardist_baseline import StarDistSettings, train_stardist

with step_logging(snakemake.log[0]):
    train_stardist(
        snakemake.input.train,
        snakemake.input.val,
        StarDistSettings.from_config(dict(snakemake.params.settings), source=snakemake.params.source),
        snakemake.output.model,
        threads=snakemake.threads,
    )
