# OME-NGFF HCS plates of each method's test predictions (cellresdm.omezarr): one job per method and plate, in the
# default target only with omezarr.enabled (rules/common.smk: omezarr_plates).


rule omezarr:
    input:
        predictions=RESULTS.predictions("{method}"),
        dataset=RESULTS.dataset("test"),
        instances=RESULTS.instances("{method}"),
    output:
        plate=directory(RESULTS.omezarr("{method}", "{plate}")),
    log:
        RESULTS.log("omezarr", "{method}_{plate}"),
    benchmark:
        RESULTS.benchmark("omezarr", "{method}_{plate}")
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=config["omezarr"],
        pixel_size_um=config["groundtruth"]["pixel_size_um"],
    script:
        "../workflow_scripts/omezarr.py"
