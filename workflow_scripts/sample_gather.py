"""Snakemake adapter: one method's prediction store and timing record from its shards."""

from cellresdm.logs import step_logging
from cellresdm.steps import gather_samples

with step_logging(snakemake.log[0]):
    gather_samples(
        list(snakemake.input.shards),
        snakemake.input.dataset,
        snakemake.output.predictions,
        snakemake.output.timing,
    )
