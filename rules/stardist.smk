# Stage 7b: StarDist2D nuclei baselines, trained on CellProfiler nuclei (BF planes or the real DNA channel as input).


rule stardist_bf:
    input:
        train=RESULTS.dataset("train"),
        val=RESULTS.dataset("val"),
    output:
        model=directory(RESULTS.stardist_model("stardist_bf")),
    log:
        RESULTS.log("train", "stardist_bf"),
    benchmark:
        RESULTS.benchmark("train", "stardist_bf")
    conda:
        "../envs/main.yaml"
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
        model=directory(RESULTS.stardist_model("stardist_if")),
    log:
        RESULTS.log("train", "stardist_if"),
    benchmark:
        RESULTS.benchmark("train", "stardist_if")
    params:
        settings=config["stardist"],
        source="stardist_if",


rule stardist_predict:
    input:
        model=RESULTS.stardist_model("{baseline}"),
        dataset=RESULTS.dataset("test"),
    output:
        instances=directory(RESULTS.instances("{baseline}")),
    log:
        RESULTS.log("segmentation", "{baseline}"),
    benchmark:
        RESULTS.benchmark("segmentation", "{baseline}")
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=config["stardist"],
        source="{baseline}",
    script:
        "../workflow_scripts/stardist_predict.py"
