# Predict plates (split predict; cellresdm.predict): each trained method's self-contained model file, then per
# method and predict plate the OME-Zarr plate, masks, per-cell profiles, OOD-flagged wells and a montage.


rule export_model:
    input:
        unpack(export_input),
    output:
        model=RESULTS.model_export("{method}"),
    log:
        RESULTS.log("export_model", "{method}"),
    benchmark:
        RESULTS.benchmark("export_model", "{method}")
    conda:
        "../envs/torch.yaml"
    threads: sample_threads
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        pixel_size_um=config["groundtruth"]["pixel_size_um"],
        predict=config["predict"],
        sample=config["sample"],
    script:
        "../workflow_scripts/export_model.py"


rule predict_plate:
    input:
        unpack(predict_input),
    output:
        inputs=directory(RESULTS.predict_inputs("{method}", "{plate}")),
        predictions=directory(RESULTS.predict_predictions("{method}", "{plate}")),
        instances=directory(RESULTS.predict_instances("{method}", "{plate}")),
        omezarr=directory(RESULTS.predict_omezarr("{method}", "{plate}")),
        cells=RESULTS.predict_cells("{method}", "{plate}"),
        wells=RESULTS.predict_wells("{method}", "{plate}"),
        montage=report(
            RESULTS.predict_montage("{method}", "{plate}"),
            caption="../report/predict_montage.rst",
            category="Predict plates",
            labels={"plate": "{plate}", "method": "{method}"},
        ),
        summary=RESULTS.predict_summary("{method}", "{plate}"),
    log:
        RESULTS.log("predict", "{method}_{plate}"),
    benchmark:
        RESULTS.benchmark("predict", "{method}_{plate}")
    wildcard_constraints:
        method="|".join(config["predict"]["methods"]),
    conda:
        "../envs/torch.yaml"
    threads: sample_threads
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        cell_line=plate_cell_line,
        pixel_size_um=predict_pixel_size,
        config=predict_config(),
    script:
        "../workflow_scripts/predict_plate.py"
