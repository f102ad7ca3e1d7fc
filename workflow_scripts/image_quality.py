"""Snakemake adapter: image-quality table of every method on the test split."""

from cellresdm.logs import step_logging
from cellresdm.steps import evaluate_quality

with step_logging(snakemake.log[0]):
    evaluate_quality(
        snakemake.input.dataset,
        list(snakemake.params.methods),
        list(snakemake.input.predictions),
        snakemake.output.table,
        snakemake.output.summary,
        snakemake.output.ttests,
        reference=snakemake.params.reference,
    )
