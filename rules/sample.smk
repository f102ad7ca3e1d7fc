# Stage 6: whole-field sampling of the test split, timed.


rule sample:
    input:
        model=method_model,
        dataset=f"{RESULTS}/datasets/test.zarr",
    output:
        predictions=directory(f"{RESULTS}/predictions/{{method}}/test.zarr"),
        timing=f"{BENCHMARKS}/sample_{{method}}.json",
    log:
        f"{LOGS}/sample/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/sample/{{method}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=720,
    params:
        settings=config["sample"],
    script:
        "../workflow_scripts/sample.py"
