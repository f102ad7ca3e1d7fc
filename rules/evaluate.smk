# Stage 8: image quality of every method's IF channels against the real ones (and the trivial BF copy).


rule image_quality:
    input:
        dataset=f"{RESULTS}/datasets/test.zarr",
        predictions=method_predictions(),
    output:
        table=f"{RESULTS}/metrics/image_quality.parquet",
        summary=report(
            f"{RESULTS}/metrics/image_quality_summary.csv",
            caption="../report/image_quality.rst",
            category="Results",
            subcategory="Image quality",
        ),
        ttests=f"{RESULTS}/metrics/image_quality_ttests.csv",
    log:
        f"{LOGS}/image_quality.log",
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        methods=config["methods"],
        reference=config["reference"],
    script:
        "../workflow_scripts/image_quality.py"
