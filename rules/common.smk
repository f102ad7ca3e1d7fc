# Shared configuration and helper functions of all rules (no lambdas in rules: name them here).
from pathlib import Path

from cellresdm import config as cfg
from cellresdm.layout import GalleryLayout

cfg.validate_config(config)

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
DEMO_GALLERY = f"{RESULTS}/demo_gallery"
DEMO_TRUTH = f"{RESULTS}/demo_truth"
REPORTS = f"{RESULTS}/reports"
VQGAN_MODEL = f"{RESULTS}/models/vqgan/model.pt"
PLATES = {plate["id"]: plate for plate in config["plates"]}
LAYOUT = GalleryLayout(
    project=config["gallery"]["project"],
    source=config["gallery"]["source"],
    batch=config["gallery"]["batch"],
)


def is_demo():
    return config["source"] == "demo"


def gallery_root():
    """Bucket root to download from (the generated demo gallery or the configured one)."""
    return DEMO_GALLERY if is_demo() else config["gallery"]["root"]


def demo_load_data(plate):
    return f"{DEMO_GALLERY}/{LAYOUT.load_data_key(plate)}"


def download_input(wildcards):
    """The demo's generated load_data.csv; nothing for a remote gallery (it is not a workflow file)."""
    return [demo_load_data(wildcards.plate)] if is_demo() else []


def plates_of_split(wildcards):
    return cfg.plates_in_split(config, wildcards.split)


def dataset_input(wildcards):
    plates = plates_of_split(wildcards)
    return {
        "fields": expand(f"{RESULTS}/fields/{{plate}}.parquet", plate=plates),
        "load_data": expand(f"{RESULTS}/raw/{{plate}}/load_data.parquet", plate=plates),
        "groundtruth": expand(
            f"{RESULTS}/groundtruth/{{plate}}/index.parquet", plate=plates
        ),
    }


def cell_lines_of_split(wildcards):
    return [PLATES[p]["cell_line"] for p in plates_of_split(wildcards)]


def qc_input():
    return expand(f"{RESULTS}/groundtruth/qc/{{plate}}.parquet", plate=PLATES)


def all_outputs():
    """Every final product of the stages implemented so far."""
    outputs = expand(f"{RESULTS}/fields/{{plate}}_platemap.png", plate=PLATES)
    outputs += expand(f"{RESULTS}/datasets/{{split}}.zarr", split=cfg.splits(config))
    if is_demo():
        outputs.append(f"{RESULTS}/groundtruth/qc_summary.csv")
    if has_model_splits() and config["methods"]:
        outputs += [f"{RESULTS}/metrics/image_quality_summary.csv"]
        outputs += expand(
            f"{RESULTS}/benchmarks/sample_{{method}}.json", method=config["methods"]
        )
    if has_model_splits() and segmentation_sources():
        outputs.append(f"{RESULTS}/segmentation/segmentation_summary.csv")
    if has_model_splits() and config["methods"]:
        outputs.append(f"{REPORTS}/report.html")
    return outputs


def report_input(wildcards):
    """Everything the paper report reads (lists follow config methods, segmentation sources and plates)."""
    methods = config["methods"]
    inputs = {
        "dataset": f"{RESULTS}/datasets/test.zarr",
        "quality": f"{RESULTS}/metrics/image_quality.parquet",
        "quality_ttests": f"{RESULTS}/metrics/image_quality_ttests.csv",
        "predictions": method_predictions(),
        "sample_benchmarks": expand(
            f"{BENCHMARKS}/sample_{{method}}.json", method=methods
        ),
        "models": expand(f"{RESULTS}/models/{{method}}/model.pt", method=methods),
        "groundtruth": expand(
            f"{RESULTS}/groundtruth/{{plate}}/index.parquet", plate=PLATES
        ),
        "fields": expand(f"{RESULTS}/fields/{{plate}}.parquet", plate=PLATES),
    }
    if segmentation_sources():
        inputs["instances"] = segmentation_instances()
        for name, path in segmentation_reports().items():
            inputs[name] = path
    if is_demo():
        inputs["qc_summary"] = f"{RESULTS}/groundtruth/qc_summary.csv"
    inputs["table2"] = f"{RESULTS}/features/table2_features.csv"
    return inputs


def feature_images(wildcards):
    """The real test images for source ``real``, else the method's synthetic ones."""
    if wildcards.source == "real":
        return f"{RESULTS}/datasets/test.zarr"
    return f"{RESULTS}/predictions/{wildcards.source}/test.zarr"


def results_dir(wildcards, input):
    """The results folder, from the test dataset's path (results/datasets/test.zarr)."""
    return str(Path(input.dataset).parent.parent)


def segmentation_reports():
    return {
        "segmentation_summary": f"{RESULTS}/segmentation/segmentation_summary.csv",
        "segmentation_ttests": f"{RESULTS}/segmentation/segmentation_ttests.csv",
        "fig6": f"{RESULTS}/segmentation/fig6_segmentation.png",
        "fig7": f"{RESULTS}/segmentation/fig7_stardist.png",
    }


def report_segmentation_figures():
    """Figs. 6 and 7 copied into the report folder when there are segmentation sources."""
    if not segmentation_sources():
        return []
    return [f"{REPORTS}/fig6_segmentation.png", f"{REPORTS}/fig7_stardist.png"]


def plate_cell_line(wildcards):
    return PLATES[wildcards.plate]["cell_line"]


def gallery_settings():
    """Download settings, with the root resolved for the demo."""
    return {
        **config["gallery"],
        "root": gallery_root(),
        "endpoint_url": None if is_demo() else config["gallery"]["endpoint_url"],
    }


def output_dir(wildcards, output):
    """Folder of the first output, where per-field files that are not declared outputs go."""
    return str(Path(output[0]).parent)


def demo_roots(wildcards, output):
    """Gallery root and truth root of the synthetic gallery, from the synth_plate outputs."""
    key = LAYOUT.load_data_key(wildcards.plate)
    return {
        "gallery": str(output.load_data)[: -len(key) - 1],
        "truth": str(Path(output.wells).parent.parent),
    }


def truth_dir(wildcards, input):
    return str(Path(input.wells).parent)


def method_model(wildcards):
    return f"{RESULTS}/models/{wildcards.method}/model.pt"


def method_predictions():
    return expand(
        f"{RESULTS}/predictions/{{method}}/test.zarr", method=config["methods"]
    )


def stardist_sources():
    """The enabled StarDist baselines; they need a val split to optimise their thresholds."""
    if "val" not in cfg.splits(config):
        return []
    return list(config["stardist"]["baselines"])


def segmentation_sources():
    """Every source of nuclei instances: each method's predicted boundaries, then the StarDist baselines."""
    return list(config["methods"]) + stardist_sources()


def segmentation_instances():
    return [
        f"{RESULTS}/segmentation/{source}_instances.zarr"
        for source in segmentation_sources()
    ]


def segmentation_tables():
    return [
        f"{RESULTS}/segmentation/{source}.parquet" for source in segmentation_sources()
    ]


def has_model_splits():
    """Training and sampling need a train and a test split."""
    return {"train", "test"} <= set(cfg.splits(config))


def uses_pipeline_vqgan(method):
    """Latent CellResDM on the VQ-GAN this pipeline trains (no vqgan_checkpoint of the user's)."""
    return method == "cellresdm_latent" and not config[method]["vqgan_checkpoint"]


def train_input(wildcards):
    inputs = {"dataset": f"{RESULTS}/datasets/train.zarr"}
    if uses_pipeline_vqgan(wildcards.method):
        inputs["vqgan"] = VQGAN_MODEL
    return inputs


def method_train_config(wildcards):
    """The config sections training one method reads (its own and ``train``), so other edits do not retrain."""
    section = dict(config[wildcards.method])
    if uses_pipeline_vqgan(wildcards.method):
        section["vqgan_checkpoint"] = VQGAN_MODEL
    return {wildcards.method: section, "train": config["train"]}


def vqgan_train_config(wildcards):
    return {"vqgan": config["vqgan"], "train": config["train"]}
