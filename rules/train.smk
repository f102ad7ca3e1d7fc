# Stage 5: train every enabled method on the train split (resumes from models/{method}/checkpoint.pt).


rule train:
    input:
        unpack(train_input),
    output:
        model=f"{RESULTS}/models/{{method}}/model.pt",
        train_log=f"{RESULTS}/models/{{method}}/train_log.csv",
    log:
        f"{LOGS}/train/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{method}}.tsv"
    retries: 1
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=2880,
    params:
        config=method_train_config,
        out_dir=output_dir,
    script:
        "../workflow_scripts/train.py"


rule train_vqgan:
    input:
        dataset=f"{RESULTS}/datasets/train.zarr",
    output:
        model=VQGAN_MODEL,
        train_log=f"{RESULTS}/models/vqgan/train_log.csv",
    log:
        f"{LOGS}/train/vqgan.log",
    benchmark:
        f"{BENCHMARKS}/train/vqgan.tsv"
    retries: 1
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
    params:
        config=vqgan_train_config,
        out_dir=output_dir,
    script:
        "../workflow_scripts/train_vqgan.py"
