# Stage 8b: CellProfiler features of the real and every method's synthetic test images (one job per source and
# shard, gathered), and Table 2.


rule features_shard:
    input:
        images=feature_images,
        dataset=RESULTS.dataset("test"),
    output:
        features=RESULTS.features_shard("{source}", "{plate}", "{shard}"),
    log:
        RESULTS.log("features", "{source}_{plate}_{shard}"),
    benchmark:
        RESULTS.benchmark("features", "{source}_{plate}_{shard}")
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=features_runtime,
    params:
        settings=config["features"],
        segmentation=config["groundtruth"],
    script:
        "../workflow_scripts/features.py"


rule features:
    input:
        images=feature_images,
        shards=feature_shards,
    output:
        features=RESULTS.features("{source}"),
    log:
        RESULTS.log("features", "{source}"),
    benchmark:
        RESULTS.benchmark("features", "{source}")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow_scripts/features_gather.py"


rule feature_correlation:
    input:
        real=RESULTS.features("real"),
        synthetic=method_features(),
    output:
        table=report(
            RESULTS.table2(),
            caption="../report/table2.rst",
            category="Results",
            subcategory="Features",
        ),
        markdown=RESULTS.table2_markdown(),
    log:
        RESULTS.log("features", "table2"),
    benchmark:
        RESULTS.benchmark("features", "table2")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        methods=config["methods"],
        by=config["features"]["correlation_by"],
        min_images=config["features"]["min_images"],
    script:
        "../workflow_scripts/feature_correlation.py"
