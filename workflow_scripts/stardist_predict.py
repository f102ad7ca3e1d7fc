"""Snakemake adapter: nuclei instances of one StarDist baseline on the test split (the shared instances store)."""

from cellresdm.logs import step_logging
from cellresdm.stardist_baseline import StarDistSettings, predict_stardist

with step_logging(snakemake.log[0]):
    predict_stardist(
        snakemake.input.model,
        snakemake.input.dataset,
        snakemake.output.instances,
        snakemake.params.source,
        StarDistSettings.from_config(dict(snakemake.params.settings), source=snakemake.params.source),
        threads=snakemake.threads,
    )
