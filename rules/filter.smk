# Stage 2: every field of a plate with a keep flag and the reason it was dropped.


rule filter_fields:
    input:
        load_data=f"{RESULTS}/raw/{{plate}}/load_data.parquet",
    output:
        fields=f"{RESULTS}/fields/{{plate}}.parquet",
        platemap=report(
            f"{RESULTS}/fields/{{plate}}_platemap.png",
            caption="../report/platemap.rst",
            category="Data",
            subcategory="Field filtering",
            labels={"plate": "{plate}"},
        ),
    log:
        f"{LOGS}/filter/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/filter/{{plate}}.tsv"
    conda:
        "../envs/main.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        settings=config["filter"],
    script:
        "../workflow_scripts/filter_fields.py"
