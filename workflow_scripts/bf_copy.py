"""Snakemake adapter: the trivial BF copy of the test split as a prediction store (features source bf_copy)."""

from cellresdm.logs import step_logging
from cellresdm.metrics import write_bf_copy

with step_logging(snakemake.log[0]) as log:
    write_bf_copy(snakemake.input.dataset, snakemake.output.images, log=log)
