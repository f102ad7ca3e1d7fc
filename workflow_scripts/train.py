"""Snakemake adapter: train one method."""

from cellresdm.logs import step_logging
from cellresdm.steps import train_method

with step_logging(snakemake.log[0]):
    train_method(snakemake.wildcards.method, snakemake.params.config, snakemake.input.dataset, snakemake.params.out_dir)
