# Stage 5: train every enabled method on the train split (resumes from the checkpoint in its model folder); a job
# given several GPUs (resource `gpu`) trains data-parallel through torchrun.


rule train:
    input:
        unpack(train_input),
    output:
        model=RESULTS.model("{method}"),
        train_log=RESULTS.train_log("{method}"),
    log:
        RESULTS.log("train", "{method}"),
    benchmark:
        RESULTS.benchmark("train", "{method}")
    retries: 1
    conda:
        "../envs/torch.yaml"
    threads: train_threads
    resources:
        mem_mb=16000,
        runtime=2880,
    params:
        config=method_train_config,
        out_dir=method_model_dir,
    script:
        "../workflow_scripts/train.py"


rule train_vqgan:
    input:
        dataset=RESULTS.dataset("train"),
    output:
        model=RESULTS.model("vqgan"),
        train_log=RESULTS.train_log("vqgan"),
    log:
        RESULTS.log("train", "vqgan"),
    benchmark:
        RESULTS.benchmark("train", "vqgan")
    retries: 1
    conda:
        "../envs/torch.yaml"
    threads: train_threads
    resources:
        mem_mb=16000,
        runtime=1440,
    params:
        config=vqgan_train_config,
        out_dir=vqgan_model_dir,
    script:
        "../workflow_scripts/train_vqgan.py"
