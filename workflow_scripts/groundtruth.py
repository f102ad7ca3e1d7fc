"""Snakemake adapter: CellProfiler ground-truth labels of one plate."""

from cellresdm.logs import step_logging
from cellresdm.steps import groundtruth

with step_logging(snakemake.log[0]):
    groundtruth(
        snakemake.wildcards.plate,
        snakemake.input.fields,
        snakemake.input.load_data,
        snakemake.params.out_dir,
        snakemake.params.settings,
        workers=snakemake.threads,
    )
