"""Snakemake adapter: sample one method on the test split."""

from cellresdm.logs import step_logging
from cellresdm.steps import sample_method

with step_logging(snakemake.log[0]):
    sample_method(
        snakemake.wildcards.method,
        snakemake.input.model,
        snakemake.input.dataset,
        snakemake.output.predictions,
        snakemake.output.timing,
        snakemake.params.settings,
    )
