# Stage 4: one zarr store per split with BF planes, IF channels, boundary masks and labels.


rule dataset:
    input:
        unpack(dataset_input),
    output:
        zarr=directory(RESULTS.dataset("{split}")),
        summary=RESULTS.dataset_summary("{split}"),
    log:
        RESULTS.log("dataset", "{split}"),
    benchmark:
        RESULTS.benchmark("dataset", "{split}")
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        plates=plates_of_split,
        cell_lines=cell_lines_of_split,
        groundtruth_dirs=groundtruth_dirs_of_split,
        settings=config["dataset"],
        boundary_thickness=config["groundtruth"]["boundary_thickness"],
    script:
        "../workflow_scripts/dataset.py"
