"""Snakemake adapter: train the VQ-GAN f=4 of latent CellResDM on the train split (on every GPU the job was
given; resumes from its checkpoint)."""

from cellresdm.logs import step_logging
from cellresdm.steps import VQGAN, launch_training, use_threads

with step_logging(snakemake.log[0]):
    use_threads(snakemake.threads)  # torchrun workers (several GPUs) get torchrun's own thread setting
    # the whole config for the torchrun workers, with the sections the rule passes (they decide reruns) on top
    launch_training(
        VQGAN,
        {**snakemake.config, **snakemake.params.config},
        snakemake.input.dataset,
        snakemake.params.out_dir,
        gpus=int(snakemake.resources.get("gpu", 0) or 0),
    )
