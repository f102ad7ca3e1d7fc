# Stage 6: whole-field sampling of the test split, one timed job per method and shard (block of wells), gathered
# into one prediction store per method.


rule sample_shard:
    input:
        model=RESULTS.model("{method}"),
        dataset=RESULTS.dataset("test"),
    output:
        predictions=temp(
            directory(RESULTS.predictions_shard("{method}", "{plate}", "{shard}"))
        ),
    log:
        RESULTS.log("sample", "{method}_{plate}_{shard}"),
    benchmark:
        RESULTS.benchmark("sample", "{method}_{plate}_{shard}")
    conda:
        "../envs/torch.yaml"
    threads: sample_threads
    resources:
        mem_mb=16000,
        runtime=sample_runtime,
    params:
        settings=config["sample"],
    script:
        "../workflow_scripts/sample.py"


rule sample:
    input:
        dataset=RESULTS.dataset("test"),
        shards=prediction_shards,
    output:
        predictions=directory(RESULTS.predictions("{method}")),
        timing=RESULTS.sample_timing("{method}"),
    log:
        RESULTS.log("sample", "{method}"),
    benchmark:
        RESULTS.benchmark("sample", "{method}")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    script:
        "../workflow_scripts/sample_gather.py"
