# Shared configuration and helper functions of all rules (no lambdas in rules: name them here).
# Every path comes from cellresdm.results (the results layout); no rule spells one.
import os

from snakemake.logging import logger

from cellresdm import config as cfg
from cellresdm.filters import is_edge_well
from cellresdm.layout import (
    ALL_CHANNELS,
    BF_CHANNELS,
    N_COLS,
    N_ROWS,
    GalleryLayout,
    parse_well,
    well_name,
)
from cellresdm.results import ResultsLayout
from cellresdm.shards import (
    WellBlock,
    plate_blocks,
    sampling_evaluations,
    shard_runtime,
)

# Fills the schema defaults in place: every key the config files leave out comes from the schema.
cfg.validate_config(config)

RESULTS = ResultsLayout()
PLATES = {plate["id"]: plate for plate in config["plates"]}
LAYOUT = GalleryLayout(
    project=config["gallery"]["project"],
    source=config["gallery"]["source"],
    batch=config["gallery"]["batch"],
)


def shown_path(path):
    """``path`` relative to the working directory where it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith("..") else relative


def config_files():
    """The config files of this run in merge order: the command line's, or config.yaml where it names none."""
    return [shown_path(path) for path in workflow.configfiles]


def write_run_config():
    """Log the run's config files and write its resolved config (validated, every default filled) to the
    results folder. Called on start, so a dry run writes nothing."""
    origin = cfg.config_origin(config_files(), workflow.config_settings.config)
    cfg.write_resolved_config(config, RESULTS.resolved_config(), origin)
    logger.info(f"Config: {origin}; resolved: {RESULTS.resolved_config()}")


def is_demo():
    return config["source"] == "demo"


def demo_load_data(plate):
    """The generated load_data.csv of a demo plate, at its gallery key."""
    return f"{RESULTS.demo_gallery()}/{LAYOUT.load_data_key(plate)}"


def download_input(wildcards):
    """The demo's generated load_data.csv; nothing for a remote gallery (it is not a workflow file)."""
    return [demo_load_data(wildcards.plate)] if is_demo() else []


def gallery_settings():
    """Download settings, with the root resolved for the demo."""
    if not is_demo():
        return config["gallery"]
    return {**config["gallery"], "root": RESULTS.demo_gallery(), "endpoint_url": None}


def demo_gallery_root(wildcards):
    return RESULTS.demo_gallery()


def demo_truth_dir(wildcards):
    return RESULTS.demo_truth(wildcards.plate)


def demo_plate_has_platemap(wildcards):
    """Demo test plates carry the wells and treatments of the demo plate map (config demo.platemap)."""
    return PLATES[wildcards.plate]["split"] == "test"


# ------------------------------------------------------------------------------------------ predict plates
# Plates of split predict: brightfield only, painted by the models of predict.methods (rules/predict.smk).


def is_predict_plate(plate):
    return PLATES[plate]["split"] == "predict"


def demo_plate_is_predict(wildcards):
    return is_predict_plate(wildcards.plate)


def evaluation_plates():
    """The plates of the train, val and test splits (all 8 channels, ground truth)."""
    return [p for p in PLATES if not is_predict_plate(p)]


def predict_plates():
    return cfg.plates_in_split(config, "predict")


def predict_methods():
    return list(config["predict"]["methods"]) if predict_plates() else []


def predict_model(method):
    """The model file painting the predict plates: the config's (predict.model), else this run's export."""
    return config["predict"]["model"].get(method) or RESULTS.model_export(method)


def predict_model_of(wildcards):
    return predict_model(wildcards.method)


def predict_planes():
    """The BF planes the predict plates need: those of every predicting model (a model file's inputs.planes, or
    this run's dataset.bf_planes)."""
    from cellresdm.dataset import BF_PLANE_CHOICES
    from cellresdm.export import read_export

    planes = set()
    for method in predict_methods():
        path = config["predict"]["model"].get(method)
        if path:
            planes.update(read_export(path)["inputs"]["planes"])
        else:
            planes.update(BF_PLANE_CHOICES[config["dataset"]["bf_planes"]])
    return [c for c in BF_CHANNELS if c in planes]


def download_channels(wildcards):
    """The channels a plate's download fetches: a predict plate's BF planes, else all 8."""
    return predict_planes() if is_predict_plate(wildcards.plate) else list(ALL_CHANNELS)


def filter_input(wildcards):
    """The plate's load_data; for a predict plate also its model files (planes and focus reference)."""
    inputs = {"load_data": RESULTS.load_data(wildcards.plate)}
    if is_predict_plate(wildcards.plate):
        inputs["models"] = [predict_model(m) for m in predict_methods()]
    return inputs


def filter_predict_settings(wildcards):
    """Config section predict for a predict plate, None for the others."""
    return config["predict"] if is_predict_plate(wildcards.plate) else None


def predict_pixel_size(wildcards):
    return (
        PLATES[wildcards.plate]["pixel_size_um"]
        or config["groundtruth"]["pixel_size_um"]
    )


def predict_platemap(wildcards):
    return PLATES[wildcards.plate]["platemap"] or ""


def predict_input(wildcards):
    inputs = {
        "model": predict_model(wildcards.method),
        "load_data": RESULTS.load_data(wildcards.plate),
        "fields": RESULTS.fields(wildcards.plate),
    }
    if PLATES[wildcards.plate]["platemap"]:
        inputs["platemap"] = PLATES[wildcards.plate]["platemap"]
    return inputs


def predict_config():
    """The config sections the predict rule reads."""
    keys = (
        "predict",
        "sample",
        "instances",
        "features",
        "groundtruth",
        "omezarr",
        "profiles",
    )
    return {key: config[key] for key in keys}


def predict_outputs():
    """Every product of the predict plates: OME-Zarr plate, cells, wells, montage and summary per method."""
    return [
        path
        for m in predict_methods()
        for p in predict_plates()
        for path in (
            RESULTS.predict_omezarr(m, p),
            RESULTS.predict_cells(m, p),
            RESULTS.predict_wells(m, p),
            RESULTS.predict_montage(m, p),
            RESULTS.predict_summary(m, p),
        )
    ]


def predict_montages():
    return [
        RESULTS.predict_montage(m, p)
        for m in predict_methods()
        for p in predict_plates()
    ]


def predict_montage_names():
    return [f"{p} ({m})" for m in predict_methods() for p in predict_plates()]


def export_input(wildcards):
    return {
        "model": RESULTS.model(wildcards.method),
        "dataset": RESULTS.dataset("train"),
        "fields": [RESULTS.fields(p) for p in cfg.plates_in_split(config, "train")],
    }


def method_model_dir(wildcards):
    return RESULTS.model_dir(wildcards.method)


def vqgan_model_dir(wildcards):
    return RESULTS.model_dir("vqgan")


def plate_cell_line(wildcards):
    return PLATES[wildcards.plate]["cell_line"]


def plates_of_split(wildcards):
    return cfg.plates_in_split(config, wildcards.split)


def cell_lines_of_split(wildcards):
    return [PLATES[p]["cell_line"] for p in plates_of_split(wildcards)]


def dataset_input(wildcards):
    plates = plates_of_split(wildcards)
    return {
        "fields": [RESULTS.fields(p) for p in plates],
        "load_data": [RESULTS.load_data(p) for p in plates],
        "groundtruth": [RESULTS.groundtruth_index(p) for p in plates],
    }


def groundtruth_dirs_of_split(wildcards):
    return [RESULTS.groundtruth_dir(p) for p in plates_of_split(wildcards)]


def qc_input():
    return [RESULTS.groundtruth_qc(p) for p in evaluation_plates()]


# ---------------------------------------------------------------------------------------------- shards
# Per-field stages run one job per block of wells (cellresdm.shards): the shards follow from the config alone.


def plate_wells(plate):
    """Wells of a plate whose fields the filter can keep: the run's wells (all of a 384-well plate when the
    config lists none) outside the edge ring."""
    if is_demo():
        wells = config["demo"]["predict_wells" if is_predict_plate(plate) else "wells"]
    else:
        wells = config["gallery"]["wells"] or [
            well_name(r, c) for r in range(1, N_ROWS + 1) for c in range(1, N_COLS + 1)
        ]
    ring = config["filter"]["edge_ring"]
    return [w for w in wells if not is_edge_well(*parse_well(w), ring)]


def plate_shards(plate):
    return plate_blocks(plate_wells(plate), config["shards"]["well_block"])


def test_shards():
    """(plate, shard) of every shard of the test split."""
    return [
        (p, s) for p in cfg.plates_in_split(config, "test") for s in plate_shards(p)
    ]


def sites_per_well():
    if is_demo():
        return config["demo"]["sites"]
    sites = config["gallery"]["sites"]
    return len(sites) if sites else config["shards"]["sites_per_well"]


def shard_size(wildcards):
    """Most fields of a shard: its wells of the run times the sites per well."""
    wells = plate_wells(wildcards.plate)
    return (
        int(WellBlock.parse(wildcards.shard).contains(wells).sum()) * sites_per_well()
    )


def shard_minutes(wildcards, seconds_per_field):
    costs = config["shards"]
    return shard_runtime(
        shard_size(wildcards), seconds_per_field, costs["margin"], costs["min_runtime"]
    )


def groundtruth_runtime(wildcards):
    return shard_minutes(
        wildcards, config["shards"]["seconds_per_field"]["groundtruth"]
    )


def sample_runtime(wildcards):
    per_step = config["shards"]["seconds_per_field"]["sample_step"]
    evaluations = (
        sampling_evaluations(config[wildcards.method]) * config["sample"]["n_samples"]
    )
    return shard_minutes(wildcards, per_step * evaluations)


def instances_runtime(wildcards):
    return shard_minutes(wildcards, config["shards"]["seconds_per_field"]["instances"])


def features_runtime(wildcards):
    return shard_minutes(wildcards, config["shards"]["seconds_per_field"]["features"])


def groundtruth_shards(wildcards):
    return [
        RESULTS.groundtruth_shard(wildcards.plate, s)
        for s in plate_shards(wildcards.plate)
    ]


def prediction_shards(wildcards):
    return [RESULTS.predictions_shard(wildcards.method, p, s) for p, s in test_shards()]


def instance_shards(wildcards):
    return [RESULTS.instances_shard(wildcards.method, p, s) for p, s in test_shards()]


def feature_shards(wildcards):
    return [RESULTS.features_shard(wildcards.source, p, s) for p, s in test_shards()]


def has_model_splits():
    """Training and sampling need a train and a test split."""
    return {"train", "test"} <= set(cfg.splits(config))


def stardist_sources():
    """The enabled StarDist baselines; they need a val split to optimise their thresholds."""
    if "val" not in cfg.splits(config):
        return []
    return list(config["stardist"]["baselines"])


def segmentation_sources():
    """Every source of nuclei instances: each method's predicted boundaries, then the StarDist baselines."""
    return list(config["methods"]) + stardist_sources()


def method_predictions():
    return [RESULTS.predictions(m) for m in config["methods"]]


def method_features():
    return [RESULTS.features(m) for m in config["methods"]]


def segmentation_instances():
    return [RESULTS.instances(s) for s in segmentation_sources()]


def segmentation_tables():
    return [RESULTS.segmentation_scores(s) for s in segmentation_sources()]


def platemap_path(plate):
    """The plate map of a test plate: its config entry's, else (demo) the generated one, else None."""
    if PLATES[plate]["platemap"]:
        return PLATES[plate]["platemap"]
    return RESULTS.demo_platemap(plate) if is_demo() else None


def profile_plates():
    """Test plates with a plate map (the profiles stage leaves the others out)."""
    plates = cfg.plates_in_split(config, "test") if "test" in cfg.splits(config) else []
    return [p for p in plates if platemap_path(p)]


def profile_sources():
    """Feature sources of the profiles stage: the real images, every method, the trivial BF copy."""
    return ["real", *config["methods"], "bf_copy"]


def has_profiles():
    return has_model_splits() and bool(config["methods"]) and bool(profile_plates())


def profiles_input(wildcards):
    """Every source's feature table, every profiled plate's plate map (and the treatment metadata table)."""
    inputs = {
        "features": [RESULTS.features(s) for s in profile_sources()],
        "platemaps": [platemap_path(p) for p in profile_plates()],
    }
    if config["profiles"]["treatment_metadata"]:
        inputs["treatment_metadata"] = config["profiles"]["treatment_metadata"]
    return inputs


def all_outputs():
    """Every final product of the configured run."""
    outputs = [RESULTS.platemap(p) for p in PLATES]
    outputs += [RESULTS.dataset(s) for s in cfg.splits(config)]
    if is_demo():
        outputs.append(RESULTS.groundtruth_qc_summary())
    if has_model_splits() and config["methods"]:
        outputs.append(RESULTS.image_quality_summary())
        outputs += [RESULTS.sample_timing(m) for m in config["methods"]]
    if has_model_splits() and segmentation_sources():
        outputs.append(RESULTS.segmentation_summary())
    if has_profiles():
        outputs.append(RESULTS.profiles_summary())
    if has_model_splits() and config["methods"]:
        outputs.append(RESULTS.report("html"))
    if has_model_splits() and config["omezarr"]["enabled"]:
        outputs += omezarr_plates()
    outputs += predict_outputs()
    return outputs


def omezarr_plates():
    """The OME-NGFF HCS plate of every method and test plate (rule omezarr)."""
    test = cfg.plates_in_split(config, "test")
    return [RESULTS.omezarr(m, p) for m in config["methods"] for p in test]


def feature_images(wildcards):
    """The real test images for source ``real``, else the method's synthetic ones."""
    if wildcards.source == "real":
        return RESULTS.dataset("test")
    if wildcards.source == "bf_copy":
        return RESULTS.bf_copy_images()
    return RESULTS.predictions(wildcards.source)


def report_input(wildcards):
    """Everything the paper report reads (lists follow config methods, segmentation sources and plates)."""
    methods = config["methods"]
    inputs = {
        "dataset": RESULTS.dataset("test"),
        "quality": RESULTS.image_quality(),
        "quality_ttests": RESULTS.image_quality_ttests(),
        "predictions": method_predictions(),
        "sample_benchmarks": [RESULTS.sample_timing(m) for m in methods],
        "models": [RESULTS.model(m) for m in methods],
        "groundtruth": [RESULTS.groundtruth_index(p) for p in evaluation_plates()],
        "fields": [RESULTS.fields(p) for p in evaluation_plates()],
        "illumination": [RESULTS.illumination_qc(p) for p in evaluation_plates()],
        "predict_montages": predict_montages(),
        "table2": RESULTS.table2(),
    }
    if segmentation_sources():
        inputs["instances"] = segmentation_instances()
        inputs["segmentation_summary"] = RESULTS.segmentation_summary()
        inputs["segmentation_ttests"] = RESULTS.segmentation_ttests()
        inputs["fig6"] = RESULTS.fig6()
        inputs["fig7"] = RESULTS.fig7()
    if is_demo():
        inputs["qc_summary"] = RESULTS.groundtruth_qc_summary()
    if has_profiles():
        inputs["profiles_summary"] = RESULTS.profiles_summary()
        inputs["profiles_figure"] = RESULTS.profiles_figure()
    return inputs


def report_profiles_files():
    """The profiles figure and summary copied into the report folder when the run has profiles."""
    if not has_profiles():
        return []
    return [RESULTS.report("profiles"), RESULTS.report("profiles_summary")]


def report_segmentation_figures():
    """Figs. 6 and 7 copied into the report folder when there are segmentation sources."""
    if not segmentation_sources():
        return []
    return [RESULTS.report("fig6"), RESULTS.report("fig7")]


def train_benchmarks():
    """Snakemake's timing of each method's training (read by the report; not an input: written after the job)."""
    return {m: RESULTS.benchmark("train", m) for m in config["methods"]}


def report_config():
    """The config keys the report reads, so an unrelated config edit does not rerun it."""
    keys = ("source", "reference", "methods", "plates")
    return {key: config[key] for key in keys} | {"profiles": profiles_caption_config()}


def profiles_caption_config():
    """The profiles keys the report's caption names (p-value correction, permutations, threshold)."""
    return {
        k: config["profiles"][k]
        for k in (
            "pvalue_correction",
            "pvalue_ties",
            "permutations",
            "pvalue_threshold",
            "normalize",
        )
    }


def uses_pipeline_vqgan(method):
    """Latent CellResDM on the VQ-GAN this pipeline trains (no vqgan_checkpoint of the user's)."""
    return method == "cellresdm_latent" and not config[method]["vqgan_checkpoint"]


def train_input(wildcards):
    inputs = {"dataset": RESULTS.dataset("train")}
    if uses_pipeline_vqgan(wildcards.method):
        inputs["vqgan"] = RESULTS.model("vqgan")
    return inputs


def method_train_config(wildcards):
    """The config sections training one method reads (its own and ``train``), so other edits do not retrain."""
    section = dict(config[wildcards.method])
    if uses_pipeline_vqgan(wildcards.method):
        section["vqgan_checkpoint"] = RESULTS.model("vqgan")
    return {wildcards.method: section, "train": config["train"]}


def train_threads(wildcards):
    """CPU threads of a training job (config ``train.threads``): torch uses exactly these (cellresdm.steps.use_threads)."""
    return config["train"]["threads"]


def sample_threads(wildcards):
    """CPU threads of a sampling job (config ``sample.threads``): torch uses exactly these."""
    return config["sample"]["threads"]


def vqgan_train_config(wildcards):
    return {"vqgan": config["vqgan"], "train": config["train"]}
