"""Snakemake adapter: one method's instance store from its shards."""

from cellresdm.logs import step_logging
from cellresdm.segment_step import gather_instances

with step_logging(snakemake.log[0]):
    gather_instances(list(snakemake.input.shards), snakemake.input.predictions, snakemake.output.instances)
