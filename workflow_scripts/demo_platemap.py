"""Snakemake adapter: the plate map of a demo test plate (config ``demo.platemap``)."""

from cellresdm.logs import step_logging
from cellresdm.synth import DemoPlatemap, write_platemap

with step_logging(snakemake.log[0]) as log:
    table = write_platemap(snakemake.output.platemap, DemoPlatemap.from_config(dict(snakemake.params.platemap)))
    log.info(
        "plate map of %s: %d wells, %d controls",
        snakemake.wildcards.plate,
        len(table),
        (table["broad_sample"] == "").sum(),
    )
