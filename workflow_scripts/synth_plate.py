"""Snakemake adapter: one plate of the embedded synthetic gallery."""

from cellresdm.logs import step_logging
from cellresdm.steps import synth_plate

with step_logging(snakemake.log[0]):
    synth_plate(
        snakemake.wildcards.plate,
        snakemake.params.cell_line,
        snakemake.params.demo,
        snakemake.params.gallery_root,
        snakemake.params.truth_dir,
        platemap=bool(snakemake.params.platemap),
        predict=bool(snakemake.params.predict),
    )
