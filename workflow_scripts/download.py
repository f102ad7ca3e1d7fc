"""Snakemake adapter: download one plate's load_data and images."""

from cellresdm.logs import step_logging
from cellresdm.steps import download

with step_logging(snakemake.log[0]):
    download(
        snakemake.wildcards.plate,
        snakemake.params.gallery,
        snakemake.params.images_dir,
        snakemake.output.load_data,
        illum_dir=snakemake.params.illum_dir,
        channels=list(snakemake.params.channels),
    )
