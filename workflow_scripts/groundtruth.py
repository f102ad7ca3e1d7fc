"""Snakemake adapter: CellProfiler ground-truth labels of one shard (block of wells) of a plate."""

from cellresdm.logs import step_logging
from cellresdm.steps import groundtruth

with step_logging(snakemake.log[0]):
    groundtruth(
        snakemake.wildcards.plate,
        snakemake.wildcards.shard,
        snakemake.input.fields,
        snakemake.input.load_data,
        snakemake.params.out_dir,
        snakemake.output.index,
        snakemake.params.settings,
        workers=snakemake.threads,
    )
