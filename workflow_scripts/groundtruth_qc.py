"""Snakemake adapter: CellProfiler labels against the demo generator's true labels."""

from cellresdm.logs import step_logging
from cellresdm.steps import groundtruth_qc

with step_logging(snakemake.log[0]):
    groundtruth_qc(
        snakemake.wildcards.plate,
        snakemake.input.index,
        snakemake.params.truth_dir,
        snakemake.output.qc,
        snakemake.params.iou,
    )
