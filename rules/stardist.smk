# Stage 7b: StarDist2D nuclei baselines, trained on CellProfiler nuclei (BF planes or the real DNA channel as input).


rule stardist_bf:
    input:
        train=f"{RESULTS}/datasets/train.zarr",
        val=f"{RESULTS}/datasets/val.zarr",
    output:
        model=directory(f"{RESULTS}/models/stardist_bf"),
    log:
        f"{LOGS}/train/stardist_bf.log",
    benchmark:
        f"{BENCHMARKS}/train/stardist_bf.tsv"
    conda:
        "../envs/stardist.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
    params:
        settings=config["stardist"],
        source="stardist_bf",
    script:
        "../workflow_scripts/stardist_train.py"


use rule stardist_bf as stardist_if with:
    output:
        model=directory(f"{RESULTS}/models/stardist_if"),
    log:
        f"{LOGS}/train/stardist_if.log",
    benchmark:
        f"{BENCHMARKS}/train/stardist_if.tsv"
    params:
        settings=config["stardist"],
        source="stardist_if",


rule stardist_predict:
    input:
        model=f"{RESULTS}/models/{{baseline}}",
        dataset=f"{RESULTS}/datasets/test.zarr",
    output:
        instances=directory(f"{RESULTS}/segmentation/{{baseline}}_instances.zarr"),
    log:
        f"{LOGS}/segmentation/{{baseline}}.log",
    benchmark:
        f"{BENCHMARKS}/segmentation/{{baseline}}.tsv"
    conda:
        "../envs/stardist.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=config["stardist"],
        source="{baseline}",
    script:
        "../workflow_scripts/stardist_predict.py"
