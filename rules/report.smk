# Stage 9: the paper's figures and tables from this run's numbers, and one self-contained report.html.


rule paper_report:
    input:
        unpack(report_input),
    output:
        html=report(
            f"{REPORTS}/report.html",
            caption="../report/paper_report.rst",
            category="Report",
        ),
        fig4=report(
            f"{REPORTS}/fig4_examples.png",
            caption="../report/fig4.rst",
            category="Results",
            subcategory="Image quality",
        ),
        fig5=report(
            f"{REPORTS}/fig5_quality.png",
            caption="../report/fig5.rst",
            category="Results",
            subcategory="Image quality",
        ),
        table3=report(
            f"{REPORTS}/table3_latent.csv",
            caption="../report/table3.rst",
            category="Results",
            subcategory="Speed",
        ),
        throughput=report(
            f"{REPORTS}/throughput.csv",
            caption="../report/throughput.rst",
            category="Results",
            subcategory="Speed",
        ),
        methods=report(
            f"{REPORTS}/methods.csv",
            caption="../report/methods.rst",
            category="Run",
        ),
        filtering=report(
            f"{REPORTS}/filtering.csv",
            caption="../report/filtering.rst",
            category="Run",
        ),
        table2=f"{REPORTS}/table2_features.csv",
        segmentation_figures=report_segmentation_figures(),
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        methods=config["methods"],
        plates=list(PLATES),
        sources=segmentation_sources(),
        train_benchmarks={m: f"{BENCHMARKS}/train/{m}.tsv" for m in config["methods"]},
        config=config,
    script:
        "../workflow_scripts/report.py"
