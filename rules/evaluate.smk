# Stage 8: image quality of every method's IF channels against the real ones (and the trivial BF copy).


rule image_quality:
    input:
        dataset=RESULTS.dataset("test"),
        predictions=method_predictions(),
    output:
        table=RESULTS.image_quality(),
        summary=report(
            RESULTS.image_quality_summary(),
            caption="../report/image_quality.rst",
            category="Results",
            subcategory="Image quality",
        ),
        ttests=RESULTS.image_quality_ttests(),
    log:
        RESULTS.log("evaluate", "image_quality"),
    benchmark:
        RESULTS.benchmark("evaluate", "image_quality")
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
