"""Snakemake adapter: sample one method on one shard of the test split (torch on the rule's threads)."""

from cellresdm.logs import step_logging
from cellresdm.steps import sample_method, use_threads

with step_logging(snakemake.log[0]):
    use_threads(snakemake.threads)
    sample_method(
        snakemake.wildcards.method,
        snakemake.input.model,
        snakemake.input.dataset,
        snakemake.output.predictions,
        snakemake.params.settings,
        shard=(snakemake.wildcards.plate, snakemake.wildcards.shard),
    )
