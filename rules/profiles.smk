# Stage 8c: well profiles (pycytominer) of the real, every method's and the BF copy's test images, and their
# retrieval mAP (copairs): replicates vs controls, same mechanism, virtual well -> real well.


rule demo_platemap:
    output:
        platemap=RESULTS.demo_platemap("{plate}"),
    log:
        RESULTS.log("demo_platemap", "{plate}"),
    benchmark:
        RESULTS.benchmark("demo_platemap", "{plate}")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        platemap=config["demo"]["platemap"],
    script:
        "../workflow_scripts/demo_platemap.py"


rule bf_copy_images:
    input:
        dataset=RESULTS.dataset("test"),
    output:
        images=directory(RESULTS.bf_copy_images()),
    log:
        RESULTS.log("profiles", "bf_copy_images"),
    benchmark:
        RESULTS.benchmark("profiles", "bf_copy_images")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow_scripts/bf_copy.py"


rule profiles:
    input:
        unpack(profiles_input),
    output:
        wells=RESULTS.profiles_wells(),
        profiles=RESULTS.profiles(),
        selection=RESULTS.profiles_selection(),
        replicate=RESULTS.profiles_replicate(),
        annotation=RESULTS.profiles_annotation(),
        crossmodal=RESULTS.profiles_crossmodal(),
        summary=report(
            RESULTS.profiles_summary(),
            caption="../report/profiles_summary.rst",
            category="Results",
            subcategory="Profiles",
        ),
        figure=report(
            RESULTS.profiles_figure(),
            caption="../report/profiles.rst",
            category="Results",
            subcategory="Profiles",
        ),
    log:
        RESULTS.log("profiles", "profiles"),
    benchmark:
        RESULTS.benchmark("profiles", "profiles")
    conda:
        "../envs/main.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        sources=profile_sources(),
        plates=profile_plates(),
        settings=config["profiles"],
    script:
        "../workflow_scripts/profiles.py"
