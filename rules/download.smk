# Stage 1: plates from the gallery (or the embedded synthetic gallery) to local files.


rule synth_plate:
    output:
        load_data=f"{DEMO_GALLERY}/{LAYOUT.load_data_key('{plate}')}",
        wells=f"{DEMO_TRUTH}/{{plate}}/wells.csv",
    log:
        f"{LOGS}/synth_plate/{{plate}}.log",
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cell_line=plate_cell_line,
        demo=config["demo"],
        roots=demo_roots,
    script:
        "../workflow_scripts/synth_plate.py"


rule download:
    input:
        download_input,
    output:
        load_data=f"{RESULTS}/raw/{{plate}}/load_data.parquet",
    log:
        f"{LOGS}/download/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/download/{{plate}}.tsv"
    retries: 2
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        gallery=gallery_settings(),
        out_dir=output_dir,
    script:
        "../workflow_scripts/download.py"
