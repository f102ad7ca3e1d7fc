"""Snakemake adapter: one plate of one method's test predictions as an OME-NGFF HCS plate."""

from cellresdm.export import dataset_pixel_size
from cellresdm.logs import step_logging
from cellresdm.omezarr import OmeZarrSettings, write_hcs_plate
from cellresdm.stores import open_dataset

with step_logging(snakemake.log[0]) as log:
    attrs = open_dataset(snakemake.input.dataset, arrays=()).attrs
    write_hcs_plate(
        snakemake.output.plate,
        snakemake.wildcards.plate,
        snakemake.input.predictions,
        snakemake.input.dataset,
        snakemake.input.instances,
        dataset_pixel_size(attrs, snakemake.params.pixel_size_um),
        OmeZarrSettings.from_config(snakemake.params.settings, threads=snakemake.threads),
        log=log,
    )
