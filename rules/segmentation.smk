# Stage 7: instances from every method's predicted boundaries, then scores of every source against CellProfiler.


rule segment:
    input:
        predictions=f"{RESULTS}/predictions/{{method}}/test.zarr",
    output:
        instances=directory(f"{RESULTS}/segmentation/{{method}}_instances.zarr"),
    log:
        f"{LOGS}/segmentation/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/segmentation/{{method}}.tsv"
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=config["segment"],
    script:
        "../workflow_scripts/segment.py"


rule segmentation_scores:
    input:
        dataset=f"{RESULTS}/datasets/test.zarr",
        instances=segmentation_instances(),
    output:
        tables=segmentation_tables(),
        ttests=f"{RESULTS}/segmentation/segmentation_ttests.csv",
        summary=report(
            f"{RESULTS}/segmentation/segmentation_summary.csv",
            caption="../report/segmentation.rst",
            category="Results",
            subcategory="Segmentation",
        ),
        fig6=report(
            f"{RESULTS}/segmentation/fig6_segmentation.png",
            caption="../report/fig6.rst",
            category="Results",
            subcategory="Segmentation",
        ),
        fig6_data=f"{RESULTS}/segmentation/fig6_segmentation.csv",
        fig7=report(
            f"{RESULTS}/segmentation/fig7_stardist.png",
            caption="../report/fig7.rst",
            category="Results",
            subcategory="Segmentation",
        ),
        fig7_data=f"{RESULTS}/segmentation/fig7_stardist.csv",
    log:
        f"{LOGS}/segmentation/scores.log",
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        sources=segmentation_sources(),
        settings=config["segmentation"],
        reference=config["reference"],
    script:
        "../workflow_scripts/segmentation_scores.py"
