"""Snakemake adapter: a trained method's self-contained model file with the predict plates' QC reference."""

from cellresdm.logs import step_logging
from cellresdm.predict import export_with_reference
from cellresdm.steps import use_threads

with step_logging(snakemake.log[0]) as log:
    use_threads(snakemake.threads)  # it samples training fields for the uncertainty reference
    export_with_reference(
        snakemake.wildcards.method,
        snakemake.input.model,
        snakemake.input.dataset,
        list(snakemake.input.fields),
        snakemake.output.model,
        snakemake.params.pixel_size_um,
        dict(snakemake.params.predict),
        dict(snakemake.params.sample),
        log=log,
    )
