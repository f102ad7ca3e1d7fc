# Stage 3: CellProfiler nuclei and cell labels per field (binary boundaries are derived in the dataset stage),
# one job per shard (block of wells) of a plate, gathered into the plate's index.


rule groundtruth_shard:
    input:
        fields=RESULTS.fields("{plate}"),
        load_data=RESULTS.load_data("{plate}"),
    output:
        index=RESULTS.groundtruth_shard("{plate}", "{shard}"),
    log:
        RESULTS.log("groundtruth", "{plate}_{shard}"),
    benchmark:
        RESULTS.benchmark("groundtruth", "{plate}_{shard}")
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=groundtruth_runtime,
    params:
        settings=config["groundtruth"],
        out_dir=RESULTS.groundtruth_dir("{plate}"),
    script:
        "../workflow_scripts/groundtruth.py"


rule groundtruth:
    input:
        fields=RESULTS.fields("{plate}"),
        shards=groundtruth_shards,
    output:
        index=RESULTS.groundtruth_index("{plate}"),
    log:
        RESULTS.log("groundtruth", "{plate}"),
    benchmark:
        RESULTS.benchmark("groundtruth", "{plate}")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    script:
        "../workflow_scripts/groundtruth_gather.py"


rule groundtruth_qc:
    input:
        index=RESULTS.groundtruth_index("{plate}"),
        wells=RESULTS.demo_wells("{plate}"),
    output:
        qc=RESULTS.groundtruth_qc("{plate}"),
    log:
        RESULTS.log("groundtruth_qc", "{plate}"),
    benchmark:
        RESULTS.benchmark("groundtruth_qc", "{plate}")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        truth_dir=demo_truth_dir,
        iou=config["groundtruth"]["qc_iou"],
    script:
        "../workflow_scripts/groundtruth_qc.py"


rule groundtruth_qc_summary:
    input:
        qc_input(),
    output:
        summary=report(
            RESULTS.groundtruth_qc_summary(),
            caption="../report/groundtruth_qc.rst",
            category="Data",
            subcategory="Ground truth",
        ),
    log:
        RESULTS.log("groundtruth_qc", "summary"),
    benchmark:
        RESULTS.benchmark("groundtruth_qc", "summary")
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
