"""Snakemake adapter: the zarr dataset of one split."""

from cellresdm.logs import step_logging
from cellresdm.steps import dataset

with step_logging(snakemake.log[0]):
    dataset(
        snakemake.wildcards.split,
        list(snakemake.params.plates),
        list(snakemake.params.cell_lines),
        list(snakemake.input.fields),
        list(snakemake.input.load_data),
        list(snakemake.params.groundtruth_dirs),
        snakemake.params.settings,
        snakemake.params.boundary_thickness,
        snakemake.output.zarr,
        snakemake.output.summary,
        workers=snakemake.threads,
    )
