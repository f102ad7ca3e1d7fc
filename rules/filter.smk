# Stage 2: every field of a plate with a keep flag and the reason it was dropped; the plate's illumination QC.


rule filter_fields:
    input:
        unpack(filter_input),
    output:
        fields=RESULTS.fields("{plate}"),
        platemap=report(
            RESULTS.platemap("{plate}"),
            caption="../report/platemap.rst",
            category="Data",
            subcategory="Field filtering",
            labels={"plate": "{plate}"},
        ),
        illumination=report(
            RESULTS.illumination_qc("{plate}"),
            caption="../report/illumination.rst",
            category="Data",
            subcategory="Illumination correction",
            labels={"plate": "{plate}"},
        ),
    log:
        RESULTS.log("filter", "{plate}"),
    benchmark:
        RESULTS.benchmark("filter", "{plate}")
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        settings=config["filter"],
        predict=filter_predict_settings,
    script:
        "../workflow_scripts/filter_fields.py"
