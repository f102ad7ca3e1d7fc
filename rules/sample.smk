# Stage 6: whole-field sampling of the test split, timed.


rule sample:
    input:
        model=RESULTS.model("{method}"),
        dataset=RESULTS.dataset("test"),
    output:
        predictions=directory(RESULTS.predictions("{method}")),
        timing=RESULTS.sample_timing("{method}"),
    log:
        RESULTS.log("sample", "{method}"),
    benchmark:
        RESULTS.benchmark("sample", "{method}")
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
