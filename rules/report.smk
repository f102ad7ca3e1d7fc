# Stage 9: the paper's figures and tables from this run's numbers, and one self-contained report.html.


rule paper_report:
    input:
        unpack(report_input),
    output:
        html=report(
            RESULTS.report("html"),
            caption="../report/paper_report.rst",
            category="Report",
        ),
        fig4=report(
            RESULTS.report("fig4"),
            caption="../report/fig4.rst",
            category="Results",
            subcategory="Image quality",
        ),
        fig5=report(
            RESULTS.report("fig5"),
            caption="../report/fig5.rst",
            category="Results",
            subcategory="Image quality",
        ),
        table3=report(
            RESULTS.report("table3"),
            caption="../report/table3.rst",
            category="Results",
            subcategory="Speed",
        ),
        throughput=report(
            RESULTS.report("throughput"),
            caption="../report/throughput.rst",
            category="Results",
            subcategory="Speed",
        ),
        methods=report(
            RESULTS.report("methods"),
            caption="../report/methods.rst",
            category="Run",
        ),
        filtering=report(
            RESULTS.report("filtering"),
            caption="../report/filtering.rst",
            category="Run",
        ),
        table2=RESULTS.report("table2"),
        segmentation_figures=report_segmentation_figures(),
        profiles=report_profiles_files(),
    log:
        RESULTS.log("report", "paper_report"),
    benchmark:
        RESULTS.benchmark("report", "paper_report")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        methods=config["methods"],
        plates=evaluation_plates(),
        predict_montages=predict_montage_names(),
        sources=segmentation_sources(),
        train_benchmarks=train_benchmarks(),
        config=report_config(),
    script:
        "../workflow_scripts/report.py"
