# Stage 1: plates from the gallery (or the embedded synthetic gallery) to local files.


rule synth_plate:
    output:
        load_data=demo_load_data("{plate}"),
        wells=RESULTS.demo_wells("{plate}"),
    log:
        RESULTS.log("synth_plate", "{plate}"),
    benchmark:
        RESULTS.benchmark("synth_plate", "{plate}")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cell_line=plate_cell_line,
        demo=config["demo"],
        gallery_root=demo_gallery_root,
        truth_dir=demo_truth_dir,
        platemap=demo_plate_has_platemap,
        predict=demo_plate_is_predict,
    script:
        "../workflow_scripts/synth_plate.py"


rule download:
    input:
        download_input,
    output:
        load_data=RESULTS.load_data("{plate}"),
    log:
        RESULTS.log("download", "{plate}"),
    benchmark:
        RESULTS.benchmark("download", "{plate}")
    retries: 2
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        gallery=gallery_settings(),
        images_dir=RESULTS.raw_images("{plate}"),
        illum_dir=RESULTS.raw_illum("{plate}"),
        channels=download_channels,
    script:
        "../workflow_scripts/download.py"
