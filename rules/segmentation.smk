# Stage 7: instances from every method's predicted boundaries (one job per shard, gathered), then scores of every
# source against CellProfiler.


rule segment_shard:
    input:
        predictions=RESULTS.predictions("{method}"),
    output:
        instances=temp(
            directory(RESULTS.instances_shard("{method}", "{plate}", "{shard}"))
        ),
    log:
        RESULTS.log("segmentation", "{method}_{plate}_{shard}"),
    benchmark:
        RESULTS.benchmark("segmentation", "{method}_{plate}_{shard}")
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=instances_runtime,
    params:
        settings=config["instances"],
    script:
        "../workflow_scripts/segment.py"


rule segment:
    input:
        predictions=RESULTS.predictions("{method}"),
        shards=instance_shards,
    output:
        instances=directory(RESULTS.instances("{method}")),
    log:
        RESULTS.log("segmentation", "{method}"),
    benchmark:
        RESULTS.benchmark("segmentation", "{method}")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../workflow_scripts/segment_gather.py"


rule segmentation_scores:
    input:
        dataset=RESULTS.dataset("test"),
        instances=segmentation_instances(),
    output:
        tables=segmentation_tables(),
        ttests=RESULTS.segmentation_ttests(),
        summary=report(
            RESULTS.segmentation_summary(),
            caption="../report/segmentation.rst",
            category="Results",
            subcategory="Segmentation",
        ),
        fig6=report(
            RESULTS.fig6(),
            caption="../report/fig6.rst",
            category="Results",
            subcategory="Segmentation",
        ),
        fig6_data=RESULTS.fig6_data(),
        fig7=report(
            RESULTS.fig7(),
            caption="../report/fig7.rst",
            category="Results",
            subcategory="Segmentation",
        ),
        fig7_data=RESULTS.fig7_data(),
    log:
        RESULTS.log("segmentation", "scores"),
    benchmark:
        RESULTS.benchmark("segmentation", "scores")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        sources=segmentation_sources(),
        settings=config["segmentation_scores"],
        reference=config["reference"],
    script:
        "../workflow_scripts/segmentation_scores.py"
