"""Snakemake adapter: a plate's ground-truth index from its shard indexes."""

from cellresdm.logs import step_logging
from cellresdm.steps import gather_groundtruth

with step_logging(snakemake.log[0]):
    gather_groundtruth(
        snakemake.wildcards.plate, list(snakemake.input.shards), snakemake.input.fields, snakemake.output.index
    )
