"""One function per pipeline step, from config sections and paths to output files.

The Snakemake scripts in ``workflow_scripts/`` and the ``cellresdm`` CLI are both thin adapters around these
functions, so a step runs the same with or without Snakemake.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cellresdm import io, layout
from cellresdm.errors import CellResDMError
from cellresdm.layout import GalleryLayout
from cellresdm.shards import shard_rows, store_shard_rows

log = logging.getLogger("cellresdm")

#: The name under which :func:`launch_training` trains the VQ-GAN of latent CellResDM (its model folder).
VQGAN = "vqgan"


def use_threads(threads: int) -> None:
    """Let torch use ``threads`` CPU threads: the rule's ``threads`` (Snakemake does not set OMP_NUM_THREADS for
    scripts, and torch's default, every core of the node, oversubscribes a shared node and changes float
    reductions from one machine to the next)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def layout_from_config(gallery: dict[str, Any]) -> GalleryLayout:
    return GalleryLayout(project=gallery["project"], source=gallery["source"], batch=gallery["batch"])


def synth_plate(
    plate: str,
    cell_line: str,
    demo: dict[str, Any],
    gallery_root: str,
    truth_dir: str,
    platemap: bool = False,
    predict: bool = False,
) -> Path:
    """Write one plate of the embedded synthetic gallery (config section ``demo``) into the bucket folder
    ``gallery_root`` and its true labels into ``truth_dir``; returns its load_data.csv. With ``platemap`` (the
    test plates) the plate carries the wells and treatments of ``demo.platemap``
    (:func:`cellresdm.synth.with_platemap`). With ``predict`` (a plate of split predict) it is brightfield only,
    with the wells ``demo.predict_wells`` and no missing field."""
    import dataclasses

    from cellresdm.synth import DemoPlatemap, SynthConfig, SynthPlate, with_platemap, write_plate

    start = time.perf_counter()
    settings = SynthConfig.from_config(demo)
    channels = layout.ALL_CHANNELS
    if platemap:
        settings = with_platemap(settings, DemoPlatemap.from_config(demo["platemap"]))
    if predict:
        wells = tuple(demo["predict_wells"])
        settings = dataclasses.replace(settings, wells=wells, black_if_wells=(), missing_fields=(), treatments=())
        channels = layout.BF_CHANNELS
    path = write_plate(gallery_root, truth_dir, SynthPlate(plate=plate, cell_line=cell_line), settings, channels)
    log.info("synthetic plate %s (%s) written in %.1f s: %s", plate, cell_line, time.perf_counter() - start, path)
    return path


def download(
    plate: str,
    gallery: dict[str, Any],
    images_dir: str,
    load_data_out: str,
    progress: bool = True,
    illum_dir: str | None = None,
    channels: Sequence[str] = layout.ALL_CHANNELS,
) -> pd.DataFrame:
    """Fetch one plate (config section ``gallery``): image files of ``channels`` into ``images_dir``, the table
    to ``load_data_out``, and, with ``gallery.illumination`` on, its illumination functions into ``illum_dir``
    (None fetches none)."""
    from cellresdm.download import download_plate

    return download_plate(
        plate,
        images_dir,
        load_data_out,
        root=gallery["root"],
        endpoint_url=gallery["endpoint_url"],
        anon=gallery["anon"],
        layout=layout_from_config(gallery),
        wells=gallery["wells"],
        sites=gallery["sites"],
        workers=gallery["workers"],
        retries=gallery["retries"],
        progress=progress,
        log=log,
        illum_dir=illum_dir if gallery["illumination"] else None,
        channels=channels,
    )


def filter_plate(
    plate: str,
    load_data: str,
    out_table: str,
    out_platemap: str,
    settings: dict[str, Any],
    workers: int = 2,
    out_illumination: str | None = None,
    predict: dict[str, Any] | None = None,
    models: list[str] | None = None,
) -> pd.DataFrame:
    """Filter table and plate map of one plate (config section ``filter``), and with ``out_illumination`` the
    plate's illumination QC (:func:`cellresdm.illumination.falloff_qc`, CSV). A predict plate passes the config
    section ``predict`` and the exported model files that will paint it: its fields need the BF planes of those
    models and get the brightfield QC against the focus reference of the first (:mod:`cellresdm.filters`)."""
    from cellresdm.filters import FilterSettings, filter_fields, plot_plate_map
    from cellresdm.illumination import falloff_qc, plate_illumination

    ld = pd.read_parquet(load_data)
    channels = layout.ALL_CHANNELS
    if predict is not None:
        from cellresdm.predict import model_qc_inputs

        channels, focus = model_qc_inputs(models or [], plate)
        filter_settings = FilterSettings.from_config(settings, workers, predict, channels, focus)
    else:
        filter_settings = FilterSettings.from_config(settings, workers=workers)
    table = filter_fields(ld, filter_settings, log=log, plate=plate)
    counts = table["reason"].replace("", "kept").value_counts().to_dict()
    log.info("plate %s: %d fields, %s", plate, len(table), counts)
    io.write_parquet(table, out_table)
    plot_plate_map(table, out_platemap, plate)
    if out_illumination is not None:
        qc = falloff_qc(ld, table, plate_illumination(ld, plate), log=log, channels=channels)
        with io.atomic_path(out_illumination) as tmp:
            qc.to_csv(tmp, index=False)
    return table


def groundtruth(
    plate: str,
    shard: str,
    fields: str,
    load_data: str,
    out_dir: str,
    index_out: str,
    settings: dict[str, Any],
    workers: int = 1,
) -> pd.DataFrame:
    """CellProfiler nuclei and cell labels of the kept fields of one shard of a plate (config section
    ``groundtruth``; :mod:`cellresdm.shards`): labels to ``out_dir``, the shard's index to ``index_out``."""
    from cellresdm.groundtruth import GroundTruthSettings, run_cellprofiler

    table = pd.read_parquet(fields)
    rows = shard_rows(table, plate, shard, "Metadata_Plate", "Metadata_Well")
    index = run_cellprofiler(
        table.iloc[rows].reset_index(drop=True),
        pd.read_parquet(load_data),
        Path(out_dir),
        GroundTruthSettings.from_config(settings),
        cellprofiler=settings["cellprofiler"],
        workers=workers,
        log=log,
        index_path=Path(index_out),
    )
    log.info("plate %s, shard %s: CellProfiler labels for %d fields", plate, shard, len(index))
    return index


def gather_groundtruth(plate: str, shards: list[str], fields: str, out: str) -> pd.DataFrame:
    """The plate's ground-truth index from its shard indexes."""
    from cellresdm.groundtruth import gather_index

    index = gather_index(shards, pd.read_parquet(fields), out)
    log.info("plate %s: %d labelled fields from %d shards", plate, len(index), len(shards))
    return index


def groundtruth_qc(plate: str, index: str, truth_dir: str, out: str, iou: float) -> pd.DataFrame:
    """Compare CellProfiler labels with the synthetic generator's true labels (demo only)."""
    from cellresdm.groundtruth import qc_against_truth

    qc = qc_against_truth(pd.read_parquet(index), Path(truth_dir), iou=iou)
    qc.insert(0, "plate", plate)
    io.write_parquet(qc, out)
    return qc


def groundtruth_qc_summary(qc_tables: list[str], out: str, min_f1: dict[str, float]) -> pd.DataFrame:
    """Pooled QC per plate and object plus an ``all`` row; logs a warning where F1 is below the minimum."""
    from cellresdm.groundtruth import qc_summary

    qc = pd.concat([pd.read_parquet(p) for p in qc_tables], ignore_index=True)
    per_plate = [qc_summary(group).assign(plate=plate) for plate, group in qc.groupby("plate")]
    summary = pd.concat([*per_plate, qc_summary(qc).assign(plate="all")], ignore_index=True)
    summary["min_f1"] = summary["object"].map(min_f1)
    summary["passed"] = summary["f1"] >= summary["min_f1"]
    for row in summary[summary["plate"] == "all"].itertuples():
        level = logging.INFO if row.passed else logging.WARNING
        log.log(level, "ground truth QC %s: F1 %.3f (minimum %.2f)", row.object, row.f1, row.min_f1)
    with io.atomic_path(out) as tmp:
        summary.to_csv(tmp, index=False)
    return summary


def dataset(
    split: str,
    plates: list[str],
    cell_lines: list[str],
    fields: list[str],
    load_data: list[str],
    groundtruth_dirs: list[str],
    settings: dict[str, Any],
    boundary_thickness: int,
    out: str,
    summary_out: str,
    workers: int = 2,
) -> dict[str, Any]:
    """Build ``datasets/{split}.zarr`` from the plates of one split (config section ``dataset``)."""
    from cellresdm.dataset import NormSettings, PlateInput, build_dataset

    if not (len(plates) == len(cell_lines) == len(fields) == len(load_data) == len(groundtruth_dirs)):
        raise CellResDMError(f"split {split}: plates, cell lines, input tables and label folders do not line up")
    inputs = [
        PlateInput(
            plate=plate,
            cell_line=line,
            fields=pd.read_parquet(table),
            load_data=pd.read_parquet(ld),
            groundtruth_dir=Path(labels),
        )
        for plate, line, table, ld, labels in zip(plates, cell_lines, fields, load_data, groundtruth_dirs, strict=True)
    ]
    summary = build_dataset(
        inputs,
        out,
        NormSettings.from_config(settings),
        resize=settings["resize"],
        boundary_thickness=boundary_thickness,
        log=log,
        workers=workers,
        bf_planes=settings["bf_planes"],
    )
    summary = {"split": split, "plates": plates, **summary}
    io.write_text(summary_out, json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def train_method(name: str, config: dict[str, Any], dataset_path: str, out_dir: str) -> Path:
    """Train method ``name`` on a dataset split with the shared trainer (config sections ``name`` and ``train``).

    The initial weights, like every later draw, depend on ``train.seed`` alone, so a run repeats exactly.
    """
    import torch

    from cellresdm.dataset import CellPaintingDataset
    from cellresdm.methods import build_method
    from cellresdm.train import Trainer, TrainSettings

    train = config["train"]
    torch.manual_seed(train["seed"])
    method = build_method(name, config)
    settings = TrainSettings.from_config(train)
    dataset = CellPaintingDataset(
        dataset_path,
        crop_size=config[name]["crop_size"],
        flips=True,
        seed=train["seed"],
        crops_per_field=settings.crops_per_field,
    )
    log.info(
        "training %s on %s (%d fields x %d crops), %d parameters",
        name,
        dataset_path,
        dataset.n_fields,
        dataset.crops_per_field,
        sum(p.numel() for p in method.network.parameters()),
    )
    trainer = Trainer(
        method.network,
        method.loss,
        dataset,
        settings,
        Path(out_dir),
        config={"method": name, **method.config()},
        log=log,
    )
    return trainer.train()


def write_launch_config(config: dict[str, Any], out_dir: str) -> Path:
    """Validate the whole ``config`` and write it to ``out_dir/launch_config.json``, the file every torchrun worker
    of a multi-GPU training reads (``cellresdm --config``); returns its path."""
    from cellresdm.config import validate_config
    from cellresdm.results import LAUNCH_CONFIG_NAME

    validated = validate_config(copy.deepcopy(config))
    path = Path(out_dir) / LAUNCH_CONFIG_NAME
    io.write_text(path, json.dumps(validated, indent=2, default=str) + "\n")
    return path


def launch_training(name: str, config: dict[str, Any], dataset_path: str, out_dir: str, gpus: int) -> Path:
    """Train method ``name`` (or ``"vqgan"``, the VQ-GAN of latent CellResDM) on one process, or on ``gpus`` GPUs
    with one torchrun process each (DDP; global batch = gpus x batch); returns ``out_dir/model.pt``.

    ``config`` is the whole config (the workers validate it again and check that ``name`` is enabled), written
    beside the model by :func:`write_launch_config`; the workers run ``cellresdm train NAME`` or
    ``cellresdm train-vqgan``.

    Raises:
        CellResDMError: ``name`` is not an enabled method, or a worker failed.
    """
    if name != VQGAN and name not in config["methods"]:
        raise CellResDMError(f"method {name!r} is not enabled in the config's methods {config['methods']}")
    if gpus <= 1:
        if name == VQGAN:
            from cellresdm.methods.vqgan import train_vqgan

            return train_vqgan(config, dataset_path, out_dir)
        return train_method(name, config, dataset_path, out_dir)
    import subprocess
    import sys

    config_file = write_launch_config(config, out_dir)
    step = ["train-vqgan"] if name == VQGAN else ["train", name]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "cellresdm.cli",
        "--config",
        str(config_file),
        *step,
        "--dataset",
        dataset_path,
        "--out-dir",
        out_dir,
    ]
    log.info("launching %d-GPU training: %s", gpus, " ".join(cmd))
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise CellResDMError(f"distributed training of {name} failed (exit {result.returncode}); see the log above")
    from cellresdm.train import MODEL_NAME

    return Path(out_dir) / MODEL_NAME


def sample_method(
    name: str,
    model_path: str,
    dataset_path: str,
    out: str,
    settings: dict[str, Any],
    shard: tuple[str, str] | None = None,
    benchmark_out: str | None = None,
) -> dict[str, Any]:
    """Sample a trained method on a dataset split (config section ``sample``): every field, or those of one
    ``shard`` = (plate, block of wells) (:mod:`cellresdm.shards`)."""
    import torch

    from cellresdm.methods import build_method
    from cellresdm.sample import SampleSettings, predict_dataset
    from cellresdm.train import load_model_weights

    checkpoint_config = torch.load(model_path, map_location="cpu", weights_only=False)["config"]
    try:
        method = build_method(name, checkpoint_config)
    except KeyError as exc:  # a section written before a key existed: the network it describes differs too
        raise CellResDMError(
            f"{model_path}: the stored {name} config has no {exc} (an older model file); retrain"
        ) from exc
    load_model_weights(Path(model_path), method.network, ema=True)
    sampling = SampleSettings.from_config(settings)
    rows = None
    if shard is not None:
        rows = store_shard_rows(dataset_path, *shard)
        log.info("%s: shard %s of plate %s, %d fields", name, shard[1], shard[0], len(rows))
    return predict_dataset(method, dataset_path, out, sampling, benchmark_out=benchmark_out, log=log, rows=rows)


def gather_samples(shards: list[str], dataset_path: str, out: str, benchmark_out: str) -> dict[str, Any]:
    """One method's prediction store and timing record from its shard stores."""
    from cellresdm.sample import gather_predictions

    return gather_predictions(shards, dataset_path, out, benchmark_out, log=log)


def evaluate_quality(
    dataset_path: str,
    methods: list[str],
    predictions: list[str],
    out: str,
    summary_out: str,
    ttests_out: str,
    reference: str = "cellresdm",
) -> pd.DataFrame:
    """Image-quality table of every method (and the trivial BF copy) on a split, its per-channel summary and the
    paired t-tests of ``reference`` against every other source."""
    from cellresdm.metrics import TRIVIAL, image_quality, quality_ttests, summarise_quality

    table = image_quality(dataset_path, dict(zip(methods, predictions, strict=True)), log=log)
    io.write_parquet(table, out)
    summary = summarise_quality(table)
    with io.atomic_path(summary_out) as tmp:
        summary.to_csv(tmp, index=False)
    with io.atomic_path(ttests_out) as tmp:
        quality_ttests(table, reference).to_csv(tmp, index=False)
    for row in summary[summary["method"] != TRIVIAL].itertuples():
        level = logging.INFO if row.beats_trivial_ssim else logging.WARNING
        log.log(
            level,
            "%s %s: SSIM %.3f (BF copy %.3f), PSNR %.2f dB",
            row.method,
            row.channel,
            row.ssim,
            row.ssim_trivial,
            row.psnr,
        )
    return summary
