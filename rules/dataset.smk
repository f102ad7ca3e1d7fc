# Stage 4: one zarr store per split with BF planes, IF channels, boundary masks and labels.


rule dataset:
    input:
        unpack(dataset_input),
    output:
        zarr=directory(f"{RESULTS}/datasets/{{split}}.zarr"),
        summary=f"{RESULTS}/datasets/{{split}}_summary.json",
    log:
        f"{LOGS}/dataset/{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/dataset/{{split}}.tsv"
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        plates=plates_of_split,
        cell_lines=cell_lines_of_split,
        groundtruth_root=f"{RESULTS}/groundtruth",
        settings=config["dataset"],
        boundary_thickness=config["groundtruth"]["boundary_thickness"],
    script:
        "../workflow_scripts/dataset.py"
