"""Snakemake adapter: pooled ground-truth QC of all demo plates."""

from cellresdm.logs import step_logging
from cellresdm.steps import groundtruth_qc_summary

with step_logging(snakemake.log[0]):
    groundtruth_qc_summary(list(snakemake.input), snakemake.output.summary, snakemake.params.min_f1)
