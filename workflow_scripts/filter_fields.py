"""Snakemake adapter: filter table, plate map and illumination QC of one plate."""

from cellresdm.logs import step_logging
from cellresdm.steps import filter_plate

with step_logging(snakemake.log[0]):
    filter_plate(
        snakemake.wildcards.plate,
        snakemake.input.load_data,
        snakemake.output.fields,
        snakemake.output.platemap,
        snakemake.params.settings,
        workers=snakemake.threads,
        out_illumination=snakemake.output.illumination,
        predict=snakemake.params.predict,
        models=list(snakemake.input.get("models", [])),
    )
