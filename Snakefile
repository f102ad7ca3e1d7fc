# CellResDM pipeline: Cell Painting Gallery plates -> datasets -> models -> the paper's figures.
# Run `snakemake --cores N` (one machine) or `snakemake --profile slurm` (cluster); see README.md.


# config.yaml (the demo) is the config only when the command line names none: a --configfile is layered over
# the schema defaults alone (rules/common.smk fills them), never over the demo's small settings.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    plate="[A-Za-z0-9_-]+",
    split="train|val|test",
    method="|".join(config["methods"]) or "none",
    baseline="stardist_bf|stardist_if",
    source="|".join(["real", *config["methods"], "bf_copy"]),
    shard="[A-P][0-9]{2}-[A-P][0-9]{2}",


include: "rules/download.smk"
include: "rules/filter.smk"
include: "rules/groundtruth.smk"
include: "rules/dataset.smk"
include: "rules/train.smk"
include: "rules/sample.smk"
include: "rules/segmentation.smk"
include: "rules/stardist.smk"
include: "rules/evaluate.smk"
include: "rules/features.smk"
include: "rules/profiles.smk"
include: "rules/report.smk"
include: "rules/omezarr.smk"
include: "rules/predict.smk"


rule all:
    default_target: True
    input:
        all_outputs(),


onstart:
    write_run_config()
