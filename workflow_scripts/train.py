"""Snakemake adapter: train one method (on every GPU the job was given)."""

from cellresdm.logs import step_logging
from cellresdm.steps import launch_training, use_threads

with step_logging(snakemake.log[0]):
    use_threads(snakemake.threads)  # torchrun workers (several GPUs) get torchrun's own thread setting
    # the whole config for the torchrun workers, with the sections the rule passes (they decide reruns) on top
    launch_training(
        snakemake.wildcards.method,
        {**snakemake.config, **snakemake.params.config},
        snakemake.input.dataset,
        snakemake.params.out_dir,
        gpus=int(snakemake.resources.get("gpu", 0) or 0),
    )
