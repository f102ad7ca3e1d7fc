# Stage 3: CellProfiler nuclei and cell labels per field (binary boundaries are derived in the dataset stage).


rule groundtruth:
    input:
        fields=f"{RESULTS}/fields/{{plate}}.parquet",
        load_data=f"{RESULTS}/raw/{{plate}}/load_data.parquet",
    output:
        index=f"{RESULTS}/groundtruth/{{plate}}/index.parquet",
    log:
        f"{LOGS}/groundtruth/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/groundtruth/{{plate}}.tsv"
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=720,
    params:
        settings=config["groundtruth"],
        out_dir=output_dir,
    script:
        "../workflow_scripts/groundtruth.py"


rule groundtruth_qc:
    input:
        index=f"{RESULTS}/groundtruth/{{plate}}/index.parquet",
        wells=f"{DEMO_TRUTH}/{{plate}}/wells.csv",
    output:
        qc=f"{RESULTS}/groundtruth/qc/{{plate}}.parquet",
    log:
        f"{LOGS}/groundtruth_qc/{{plate}}.log",
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        truth_dir=truth_dir,
        iou=config["groundtruth"]["qc_iou"],
    script:
        "../workflow_scripts/groundtruth_qc.py"


rule groundtruth_qc_summary:
    input:
        qc_input(),
    output:
        summary=report(
            f"{RESULTS}/groundtruth/qc_summary.csv",
            caption="../report/groundtruth_qc.rst",
            category="Data",
            subcategory="Ground truth",
        ),
    log:
        f"{LOGS}/groundtruth_qc/summary.log",
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        min_f1={
            "nuclei": config["groundtruth"]["qc_min_f1_nuclei"],
            "cells": config["groundtruth"]["qc_min_f1_cells"],
        },
    script:
        "../workflow_scripts/groundtruth_qc_summary.py"
