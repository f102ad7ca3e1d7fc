"""Snakemake adapter: Table 2, Pearson r of per-image features between real and each method's images."""

from cellresdm.features import write_table2
from cellresdm.logs import step_logging

with step_logging(snakemake.log[0]) as log:
    write_table2(
        snakemake.input.real,
        dict(zip(snakemake.params.methods, snakemake.input.synthetic, strict=True)),
        snakemake.output.table,
        snakemake.output.markdown,
        by=tuple(snakemake.params.by),
        min_images=int(snakemake.params.min_images),
        log=log,
    )
