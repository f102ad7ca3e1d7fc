# Stage 8b: CellProfiler features of the real and every method's synthetic test images, and Table 2.


rule features:
    input:
        images=feature_images,
        dataset=f"{RESULTS}/datasets/test.zarr",
    output:
        features=f"{RESULTS}/features/{{source}}.parquet",
    log:
        f"{LOGS}/features/{{source}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{source}}.tsv"
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=1440,
    params:
        settings=config["features"],
        segmentation=config["groundtruth"],
    script:
        "../workflow_scripts/features.py"


rule feature_correlation:
    input:
        real=f"{RESULTS}/features/real.parquet",
        synthetic=expand(
            f"{RESULTS}/features/{{method}}.parquet", method=config["methods"]
        ),
    output:
        table=report(
            f"{RESULTS}/features/table2_features.csv",
            caption="../report/table2.rst",
            category="Results",
            subcategory="Features",
        ),
        markdown=f"{RESULTS}/features/table2.md",
    log:
        f"{LOGS}/features/table2.log",
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        by=config["features"]["correlation_by"],
        min_images=config["features"]["min_images"],
    script:
        "../workflow_scripts/feature_correlation.py"
