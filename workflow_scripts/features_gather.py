"""Snakemake adapter: one source's per-image feature table from its shards, in the order of its image store."""

from cellresdm.features import gather_features
from cellresdm.logs import step_logging
from cellresdm.stores import open_if_images

with step_logging(snakemake.log[0]):
    fields = open_if_images(snakemake.input.images).fields
    gather_features(list(snakemake.input.shards), fields, snakemake.output.features)
