"""Snakemake adapter: train the VQ-GAN f=4 of latent CellResDM on the train split (resumes from its checkpoint)."""

from cellresdm.logs import step_logging
from cellresdm.methods.vqgan import train_vqgan

with step_logging(snakemake.log[0]):
    train_vqgan(dict(snakemake.params.config), snakemake.input.dataset, snakemake.params.out_dir)
