"""CellProfiler features of real and synthetic IF images, and their correlation (DESIGN.md section 5, features).

Each field's 5 IF channels (``if`` (N, 5, H, W) float16 in [0, 1] of a dataset or predictions zarr, order
layout.IF_CHANNELS) are written as uint16 TIFFs (value * 65535) and measured with the measurement part of the
cpg0000 (CPJUMP1) analysis pipeline: every image set is segmented from its OWN IF channels (nuclei from DNA
after background subtraction, cells by watershed on RNA, cytoplasm = cells - shrunken nuclei), then
MeasureColocalization, MeasureGranularity, MeasureObjectIntensity, MeasureObjectNeighbors,
MeasureObjectIntensityDistribution, MeasureObjectSizeShape, MeasureTexture and MeasureImageIntensity run
with the reference settings (pixel sizes scaled to the field's pixel size) and ExportToSpreadsheet writes
per-object and per-image CSVs.

Per image, per-object measurements are aggregated with the median (or mean) and named like pycytominer:
``{Compartment}_{Measurement}`` (``Cells_Intensity_MeanIntensity_DNA``, ``Nuclei_AreaShape_Area``), image
measurements ``Image_{Measurement}`` (``Image_Count_Cells``, ``Image_Intensity_MeanIntensity_DNA``). An
image set where CellProfiler finds no object of a compartment has NaN features for that compartment (its
``Image_Count_*`` is 0): the correlation stage skips NaN pairs.

Backends: ``cellprofiler`` (all measurements by CellProfiler) or ``cp_measure`` (CellProfiler segments and
saves its label images; cp_measure computes the per-object measurements in-process from those labels, see
:data:`CP_MEASURE_CATEGORIES`).

Table 2 (:func:`feature_correlation`, :func:`table2`): per source and feature the Pearson r across test
images between real and synthetic per-image values, averaged per feature category.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from cellresdm import layout
from cellresdm.cellprofiler import DEFAULT_CELLPROFILER, CellProfilerRunner, ChunkFolder, resolve_cellprofiler
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.groundtruth import SegmentationSettings, _num, _px, _yes, make_pipeline
from cellresdm.io import atomic_path, read_tiff, write_parquet

_LOG = logging.getLogger("cellresdm")

#: Compartments (CellProfiler object names) measured per object.
COMPARTMENTS: tuple[str, ...] = ("Nuclei", "Cells", "Cytoplasm")
#: Feature categories of Table 2 (the measurement name after the compartment); AreaShape has its own row.
CATEGORIES: tuple[str, ...] = (
    "AreaShape",
    "Correlation",
    "Count",
    "Granularity",
    "Intensity",
    "Location",
    "Neighbors",
    "RadialDistribution",
    "Texture",
)
#: Categories the cp_measure backend computes per object (no Location; Image_Count_* from the labels).
CP_MEASURE_CATEGORIES: tuple[str, ...] = (
    "AreaShape",
    "Correlation",
    "Granularity",
    "Intensity",
    "Neighbors",
    "RadialDistribution",
    "Texture",
)
#: Metadata columns of a feature table, in order.
METADATA_COLUMNS: tuple[str, ...] = (
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Site",
    "Metadata_Field",
    "Metadata_CellLine",
    "Metadata_Source",
    "Metadata_Seconds",
)
#: Columns of the long correlation table.
CORRELATION_COLUMNS: tuple[str, ...] = ("source", "cell_line", "category", "n_features", "r")
_BACKENDS = ("cellprofiler", "cp_measure")
_AGGREGATES = ("median", "mean")
_IMAGE_CATEGORIES = ("Count", "Intensity", "Granularity", "Texture", "Correlation")
_HEADER = (
    "{name}:[module_num:{num}|svn_version:'Unknown'|variable_revision_number:{rev}|show_window:False|"
    "notes:[{notes}]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]"
)


@dataclass(frozen=True)
class FeatureSettings:
    """Settings of the feature stage; sizes are in pixels at 0.598 um/px and scaled like the segmentation.

    Attributes:
        segmentation: nuclei/cell segmentation settings (the ground-truth ones, but
            ``discard_border_nuclei=True`` as in the reference analysis pipeline: cut cells bias features).
            Its ``pixel_size_um`` is the pixel size of the measured fields.
        backend: ``"cellprofiler"`` or ``"cp_measure"``.
        aggregate: per-image aggregation of per-object values, ``"median"`` or ``"mean"``.
        chunk_size: most image sets per CellProfiler process.
        workers: CellProfiler processes (or cp_measure threads) run in parallel.
        colocalization_threshold: MeasureColocalization threshold, % of the maximum intensity (15).
        granularity_subsample, granularity_background_subsample: subsampling factors (0.5, 0.5).
        granularity_radius: structuring element radius, px (10, in subsampled pixels).
        granularity_range: length of the granular spectrum (16).
        neighbor_distance_cells, neighbor_distance_nuclei: "Within a specified distance" of the two
            MeasureObjectNeighbors modules, px (5 and 1; a third one measures adjacent cells).
        radial_bins: MeasureObjectIntensityDistribution bins (4, scaled bins).
        radial_max_radius: its maximum radius, px (100; unused with scaled bins).
        zernike: MeasureObjectSizeShape Zernike features (True).
        texture_scales: MeasureTexture scales, px ((3, 5, 10)).
        texture_gray_levels: MeasureTexture gray levels (256).
    """

    segmentation: SegmentationSettings = field(default_factory=lambda: SegmentationSettings(discard_border_nuclei=True))
    backend: str = "cellprofiler"
    aggregate: str = "median"
    chunk_size: int = 50
    workers: int = 2
    colocalization_threshold: float = 15.0
    granularity_subsample: float = 0.5
    granularity_background_subsample: float = 0.5
    granularity_radius: float = 10
    granularity_range: int = 16
    neighbor_distance_cells: float = 5
    neighbor_distance_nuclei: float = 1
    radial_bins: int = 4
    radial_max_radius: float = 100
    zernike: bool = True
    texture_scales: tuple[float, ...] = (3, 5, 10)
    texture_gray_levels: int = 256

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"features.{name}: {why} (got {getattr(self, name)!r})")

        if self.backend not in _BACKENDS:
            raise bad("backend", f"must be one of {list(_BACKENDS)}")
        if self.aggregate not in _AGGREGATES:
            raise bad("aggregate", f"must be one of {list(_AGGREGATES)}")
        for name in ("chunk_size", "workers", "granularity_range", "radial_bins"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "must be an int >= 1")
        if not 2 <= self.texture_gray_levels <= 256:
            raise bad("texture_gray_levels", "must be in [2, 256]")
        if not 0 < self.colocalization_threshold < 100:
            raise bad("colocalization_threshold", "must be in (0, 100)")
        for name in ("granularity_subsample", "granularity_background_subsample"):
            if not 0 < getattr(self, name) <= 1:
                raise bad(name, "must be in (0, 1]")
        for name in ("granularity_radius", "neighbor_distance_cells", "neighbor_distance_nuclei", "radial_max_radius"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        if not self.texture_scales or any(s <= 0 for s in self.texture_scales):
            raise bad("texture_scales", "must be a non-empty list of numbers > 0")

    @classmethod
    def from_config(cls, section: Mapping, segmentation: Mapping | None = None) -> FeatureSettings:
        """Settings from the ``features`` config section.

        ``segmentation`` (e.g. the ``groundtruth`` section) gives the segmentation keys; the section's own
        ``segmentation`` mapping overrides them. ``discard_border_nuclei`` is True unless the features
        section sets it (the ground-truth value is not inherited). Unknown keys are ignored; lists become
        tuples.
        """
        seg = {k: v for k, v in dict(segmentation or {}).items() if k != "discard_border_nuclei"}
        seg = {"discard_border_nuclei": True, **seg, **dict(section.get("segmentation") or {})}
        names = set(cls.__dataclass_fields__) - {"segmentation"}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in names}
        return cls(segmentation=SegmentationSettings.from_config(seg), **kwargs)

    def at_pixel_size(self, pixel_size_um: float) -> FeatureSettings:
        """These settings for fields of another pixel size (e.g. a dataset resized from the source)."""
        return dataclasses.replace(
            self, segmentation=dataclasses.replace(self.segmentation, pixel_size_um=float(pixel_size_um))
        )


# ----------------------------------------------------------------------------------------------- pipeline


def _module(name: str, rev: int, settings: Sequence[tuple[str, object]], notes: str = "") -> str:
    head = _HEADER.format(name=name, num="{num}", rev=rev, notes=repr(notes) if notes else "")
    return "\n".join([head, *(f"    {k}:{v}" for k, v in settings)])


def _segmentation_modules(settings: SegmentationSettings) -> list[str]:
    """Background subtraction of DNA, nuclei and cells from the ground-truth pipeline, reading DNA and RNA."""
    blocks = [b for b in re.split(r"\n\s*\n", make_pipeline(settings)) if re.match(r"^\w+:\[module_num:", b)]
    keep = ("CorrectIlluminationCalculate", "CorrectIlluminationApply", "IdentifyPrimaryObjects")
    keep += ("IdentifySecondaryObjects",)
    out = []
    for block in blocks:
        name = block.split(":", 1)[0]
        if name in keep:
            block = re.sub(r"module_num:\d+", "module_num:{num}", block, count=1)
            out.append(block.replace(":OrigDNA", ":DNA").replace(":OrigRNA", ":RNA"))
    if [b.split(":", 1)[0] for b in out] != list(keep):
        raise CellResDMError("the ground-truth pipeline template lacks a segmentation module")
    return out


def _save_labels(obj: str) -> list[str]:
    convert = _module(
        "ConvertObjectsToImage",
        1,
        [
            ("Select the input objects", obj),
            ("Name the output image", f"{obj}LabelImage"),
            ("Select the color format", "uint16"),
            ("Select the colormap", "Default"),
        ],
    )
    save = _module(
        "SaveImages",
        16,
        [
            ("Select the type of image to save", "Image"),
            ("Select the image to save", f"{obj}LabelImage"),
            ("Select method for constructing file names", "Single name"),
            ("Select image name for file prefix", "None"),
            ("Enter single file name", f"\\g<Field>_{obj.lower()}"),
            ("Number of digits", 4),
            ("Append a suffix to the image file name?", "No"),
            ("Text to append to the image name", ""),
            ("Saved file format", "tiff"),
            ("Output file location", "Default Output Folder|"),
            ("Image bit depth", "16-bit integer"),
            ("Overwrite existing files without warning?", "Yes"),
            ("When to save", "Every cycle"),
            ("Record the file and path information to the saved image?", "No"),
            ("Create subfolders in the output folder?", "No"),
            ("Base image folder", "Elsewhere...|"),
            ("How to save the series", "T (Time)"),
            ("Save with lossless compression?", "No"),
        ],
    )
    return [convert, save]


def _neighbors(obj: str, method: str, distance: int) -> str:
    return _module(
        "MeasureObjectNeighbors",
        3,
        [
            ("Select objects to measure", obj),
            ("Select neighboring objects to measure", obj),
            ("Method to determine neighbors", method),
            ("Neighbor distance", distance),
            ("Consider objects discarded for touching image border?", "Yes"),
            ("Retain the image of objects colored by numbers of neighbors?", "No"),
            ("Name the output image", "ObjectNeighborCount"),
            ("Select colormap", "Default"),
            ("Retain the image of objects colored by percent of touching pixels?", "No"),
            ("Name the output image", "PercentTouching"),
            ("Select colormap", "Default"),
        ],
    )


def _measurement_modules(settings: FeatureSettings) -> list[str]:
    s = settings.segmentation.scale
    images = ", ".join(layout.IF_CHANNELS)
    objects = ", ".join(COMPARTMENTS)
    radial_objects: list[tuple[str, object]] = []
    for obj in COMPARTMENTS:
        radial_objects += [
            ("Select objects to measure", obj),
            ("Object to use as center?", "These objects"),
            ("Select objects to use as centers", "None"),
        ]
    scales = [_px(v, s) for v in settings.texture_scales]
    return [
        _module(
            "MeasureColocalization",
            5,
            [
                ("Select images to measure", images),
                (
                    "Set threshold as percentage of maximum intensity for the images",
                    _num(settings.colocalization_threshold),
                ),
                ("Select where to measure correlation", "Within objects"),
                ("Select objects to measure", objects),
                ("Run all metrics?", "No"),
                ("Calculate correlation and slope metrics?", "Yes"),
                ("Calculate the Manders coefficients?", "Yes"),
                ("Calculate the Rank Weighted Colocalization coefficients?", "Yes"),
                ("Calculate the Overlap coefficients?", "Yes"),
                ("Calculate the Manders coefficients using Costes auto threshold?", "No"),
                ("Method for Costes thresholding", "Fast"),
            ],
        ),
        _module(
            "MeasureGranularity",
            4,
            [
                ("Select images to measure", images),
                ("Measure within objects?", "Yes"),
                ("Select objects to measure", objects),
                ("Subsampling factor for granularity measurements", _num(settings.granularity_subsample)),
                ("Subsampling factor for background reduction", _num(settings.granularity_background_subsample)),
                ("Radius of structuring element", _px(settings.granularity_radius, s)),
                ("Range of the granular spectrum", settings.granularity_range),
            ],
        ),
        _module(
            "MeasureObjectIntensity",
            4,
            [("Select images to measure", images), ("Select objects to measure", objects)],
        ),
        _neighbors("Cells", "Within a specified distance", _px(settings.neighbor_distance_cells, s)),
        _neighbors("Nuclei", "Within a specified distance", _px(settings.neighbor_distance_nuclei, s)),
        _neighbors("Cells", "Adjacent", _px(settings.neighbor_distance_cells, s)),
        _module(
            "MeasureObjectIntensityDistribution",
            6,
            [
                ("Select images to measure", images),
                ("Hidden", len(COMPARTMENTS)),
                ("Hidden", 1),
                ("Hidden", 0),
                ("Calculate intensity Zernikes?", "None"),
                ("Maximum zernike moment", 9),
                *radial_objects,
                ("Scale the bins?", "Yes"),
                ("Number of bins", settings.radial_bins),
                ("Maximum radius", _px(settings.radial_max_radius, s)),
            ],
        ),
        _module(
            "MeasureObjectSizeShape",
            3,
            [
                ("Select object sets to measure", objects),
                ("Calculate the Zernike features?", _yes(settings.zernike)),
                ("Calculate the advanced features?", "No"),
            ],
        ),
        _module(
            "MeasureTexture",
            7,
            [
                ("Select images to measure", images),
                ("Select objects to measure", objects),
                ("Enter how many gray levels to measure the texture at", settings.texture_gray_levels),
                ("Hidden", len(scales)),
                ("Measure whole images or objects?", "Both"),
                *(("Texture scale to measure", v) for v in scales),
            ],
        ),
        _module(
            "MeasureImageIntensity",
            4,
            [
                ("Select images to measure", images),
                ("Measure the intensity only from areas enclosed by objects?", "No"),
                ("Select input object sets", ""),
                ("Calculate custom percentiles", "No"),
                ("Specify percentiles to measure", "10,90"),
            ],
        ),
    ]


def _export_module() -> str:
    return _module(
        "ExportToSpreadsheet",
        13,
        [
            ("Select the column delimiter", 'Comma (",")'),
            ("Add image metadata columns to your object data file?", "No"),
            ("Add image file and folder names to your object data file?", "No"),
            ("Select the measurements to export", "No"),
            ("Calculate the per-image mean values for object measurements?", "No"),
            ("Calculate the per-image median values for object measurements?", "No"),
            ("Calculate the per-image standard deviation values for object measurements?", "No"),
            ("Output file location", "Default Output Folder|"),
            ("Create a GenePattern GCT file?", "No"),
            ("Select source of sample row name", "Metadata"),
            ("Select the image to use as the identifier", "None"),
            ("Select the metadata to use as the identifier", "None"),
            ("Export all measurement types?", "Yes"),
            ("Press button to select measurements", ""),
            ("Representation of Nan/Inf", "NaN"),
            ("Add a prefix to file names?", "No"),
            ("Filename prefix", "MyExpt_"),
            ("Overwrite existing files without warning?", "Yes"),
            ("Data to export", "Do not use"),
            ("Combine these object measurements with those of the previous object?", "No"),
            ("File name", "DATA.csv"),
            ("Use the object name for the file name?", "Yes"),
        ],
    )


def make_measurement_pipeline(settings: FeatureSettings, measure: bool = True) -> str:
    """The ``.cppipe`` text (CellProfiler 4.2.8.1) of the feature pipeline.

    LoadData reads a CSV given with ``--data-file``: ``FileName_/PathName_{DNA,RNA,ER,AGP,Mito}`` and
    ``Metadata_Field`` (a file-name-safe id of the image set); intensities are rescaled to [0, 1]. Modules:
    DNA background subtraction, IdentifyPrimaryObjects (Nuclei), IdentifySecondaryObjects (Cells, watershed
    on RNA), IdentifyTertiaryObjects (Cytoplasm), label images ``{Field}_{nuclei,cells,cytoplasm}.tiff``
    (uint16) and, with ``measure``, the measurement modules of the reference pipeline plus
    MeasureImageIntensity and ExportToSpreadsheet (``Image.csv``, ``Nuclei.csv``, ``Cells.csv``,
    ``Cytoplasm.csv``). ``measure=False`` gives the segmentation-only pipeline of the cp_measure backend
    (it still exports ``Image.csv`` for the counts).
    """
    load = _module(
        "LoadData",
        6,
        [
            ("Input data file location", "Default Input Folder|"),
            ("Name of the file", "load_data.csv"),
            ("Load images based on this data?", "Yes"),
            ("Base image location", "None|"),
            ("Process just a range of rows?", "No"),
            ("Rows to process", "1,100000"),
            ("Group images by metadata?", "No"),
            ("Select metadata tags for grouping", "Field"),
            ("Rescale intensities?", "Yes"),
        ],
        notes="cellresdm features: measurement part of the cpg0000 (CPJUMP1) analysis pipeline, "
        "generated by cellresdm.features.make_measurement_pipeline.",
    )
    tertiary = _module(
        "IdentifyTertiaryObjects",
        3,
        [
            ("Select the larger identified objects", "Cells"),
            ("Select the smaller identified objects", "Nuclei"),
            ("Name the tertiary objects to be identified", "Cytoplasm"),
            ("Shrink smaller object prior to subtraction?", "Yes"),
        ],
    )
    modules = [load, *_segmentation_modules(settings.segmentation), tertiary]
    for obj in COMPARTMENTS:
        modules += _save_labels(obj)
    if measure:
        modules += _measurement_modules(settings)
    modules.append(_export_module())
    body = "\n\n".join(m.replace("module_num:{num}", f"module_num:{k}") for k, m in enumerate(modules, 1))
    head = "CellProfiler Pipeline: http://www.cellprofiler.org\nVersion:5\nDateRevision:4281\nGitHash:\n"
    head += f"ModuleCount:{len(modules)}\nHasImagePlaneDetails:False\n\n"
    return head + body + "\n"


# ----------------------------------------------------------------------------------------------- running


def _image_id(plate: str, field_name: str) -> str:
    """File-name-safe id of an image set (plate and field)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{plate}_{field_name}")


def _write_channels(images: np.ndarray, folder: Path, image_id: str) -> dict[str, str]:
    """Write (5, H, W) [0, 1] images as uint16 TIFFs; return the LoadData columns of the image set."""
    row: dict[str, str] = {}
    for channel, img in zip(layout.IF_CHANNELS, images, strict=True):
        a = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0), 0, 1)
        name = f"{image_id}_{channel}.tiff"
        tifffile.imwrite(folder / name, np.round(a * 65535).astype(np.uint16))
        row[f"FileName_{channel}"] = name
        row[f"PathName_{channel}"] = str(folder)
    return row


def _measure_chunk(
    runner: CellProfilerRunner, work: Path, k: int, images: np.ndarray, ids: list[str], log_prefix: Path
) -> tuple[Path, dict[str, float]]:
    """Write the chunk's TIFFs (to ``work/chunk{k:04d}/images``) and run CellProfiler on them; return its
    output folder and {image id: seconds}.

    A failed chunk's log is kept at ``{log_prefix}.cellprofiler_chunk{k:04d}.log``.
    """
    folder = ChunkFolder.create(work, k)
    pics = folder.root / "images"
    pics.mkdir()
    rows = [{**_write_channels(img, pics, i), "Metadata_Field": i} for img, i in zip(images, ids, strict=True)]
    pd.DataFrame(rows).to_csv(folder.data_file, index=False)
    run = runner.run(folder)
    out = folder.output
    missing = [n for n in ("Image.csv", *(f"{c}.csv" for c in COMPARTMENTS)) if not (out / n).is_file()]
    if run.returncode != 0 or missing:
        # the image set being processed is the last one CellProfiler reported a module time for
        failed = ids[min(max(run.last_image_set, 1), len(ids)) - 1]
        raise run.error(
            f"did not write {missing}",
            f"on feature chunk {k} ({len(ids)} image sets, {ids[0]}..{ids[-1]}), at or after image set {failed}",
            Path(f"{log_prefix}.cellprofiler_chunk{k:04d}.log"),
        )
    return out, runner.finish(run, ids, f"feature chunk {k}")


def run_cellprofiler_chunk(
    images: np.ndarray,
    ids: Sequence[str],
    work: str | os.PathLike,
    settings: FeatureSettings,
    cellprofiler: str = DEFAULT_CELLPROFILER,
    measure: bool = True,
    log: logging.Logger | None = None,
) -> tuple[Path, dict[str, float]]:
    """Run the feature pipeline once on ``images`` ((N, 5, H, W) float in [0, 1]) named by ``ids``.

    Everything is written under ``work`` (an empty or new folder the caller owns): TIFFs in
    ``work/chunk0000/images``, CellProfiler's exports and label images in the returned folder.

    Returns:
        (output folder with Image.csv, {Nuclei,Cells,Cytoplasm}.csv and ``{id}_{nuclei,cells,cytoplasm}.tiff``,
        {id: seconds}).
    """
    work = Path(work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    pipeline = work / "features.cppipe"
    pipeline.write_text(make_measurement_pipeline(settings, measure=measure))
    runner = CellProfilerRunner(resolve_cellprofiler(cellprofiler), pipeline, log or _LOG, None)
    return _measure_chunk(runner, work, 0, np.asarray(images), list(ids), work / "features")


def _category(measurement: str) -> str:
    return measurement.split("_", 1)[0]


def _aggregate_objects(table: pd.DataFrame, prefix: str, how: str) -> pd.DataFrame:
    """Per-image median/mean of per-object measurements (rows: ImageNumber), columns ``{prefix}_{name}``."""
    # object numbers of the closest neighbours are identifiers, not measurements
    cols = [c for c in table.columns if _category(c) in CATEGORIES and "ObjectNumber" not in c]
    values = table[cols].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    agg = values.groupby(table["ImageNumber"].to_numpy()).agg(how)
    return agg.add_prefix(f"{prefix}_")


def _image_measurements(image: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in image.columns if _category(c) in _IMAGE_CATEGORIES]
    out = image[cols].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    out.index = image["ImageNumber"].to_numpy()
    return out.add_prefix("Image_")


def _read_export(out: Path, name: str) -> pd.DataFrame:
    path = out / f"{name}.csv"
    try:
        return pd.read_csv(path, low_memory=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CellResDMError(f"cannot read CellProfiler export {path}: {exc}") from exc


def _chunk_features(out: Path, ids: list[str], how: str) -> pd.DataFrame:
    """Per-image features of one CellProfiler chunk, indexed by image id in ``ids`` order."""
    image = _read_export(out, "Image")
    if "Metadata_Field" not in image.columns:
        raise CellResDMError(f"{out / 'Image.csv'} lacks Metadata_Field")
    number = dict(zip(image["Metadata_Field"].astype(str), image["ImageNumber"], strict=True))
    lacking = [i for i in ids if i not in number]
    if lacking:
        raise CellResDMError(f"CellProfiler exported no Image row for image sets {lacking[:5]} ({out})")
    parts = [_image_measurements(image)]
    for obj in COMPARTMENTS:
        parts.append(_aggregate_objects(_read_export(out, obj), obj, how))
    table = pd.concat(parts, axis=1).reindex([number[i] for i in ids])
    table.index = ids
    return table


def _labels_of(out: Path, image_id: str) -> dict[str, np.ndarray]:
    return {obj: read_tiff(out / f"{image_id}_{obj.lower()}.tiff", ndim=2).astype(np.int32) for obj in COMPARTMENTS}


def _sort_columns(table: pd.DataFrame) -> pd.DataFrame:
    meta = [c for c in METADATA_COLUMNS if c in table.columns]
    image = sorted(c for c in table.columns if c.startswith("Image_"))
    rest = [f"{o}_" for o in COMPARTMENTS]
    objs = [c for p in rest for c in sorted(c for c in table.columns if c.startswith(p))]
    return table[meta + image + objs]


def extract_features(
    dataset_or_predictions: str | os.PathLike,
    source: str,
    out: str | os.PathLike,
    settings: FeatureSettings,
    cellprofiler: str = DEFAULT_CELLPROFILER,
    workers: int | None = None,
    progress: bool = True,
    log: logging.Logger | None = None,
    reference: str | os.PathLike | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Measure every field of a dataset or predictions zarr and write the per-image feature table.

    Args:
        dataset_or_predictions: zarr with ``if`` (N, 5, H, W) float16 in [0, 1] (layout.IF_CHANNELS) and
            ``fields.parquet`` (plate, cell_line, well, site, field, index).
        source: name of the source (``real`` or the method); ``Metadata_Source``.
        out: the parquet to write (``results/features/{source}.parquet``), atomically.
        settings: feature settings; its segmentation pixel size is that of the source images and is scaled
            by ``source_shape / shape`` of the zarr attributes (of ``reference`` when given: predictions
            carry no source shape, pass the dataset they were sampled from).
        cellprofiler: CellProfiler executable (path, or a name on PATH).
        workers: parallel CellProfiler processes (default ``settings.workers``).
        progress: tqdm progress bar (image sets).
        log: logger (default ``cellresdm``).
        reference: zarr whose attributes give the field's resize factor (default: the input).
        limit: measure only the first ``limit`` fields (benchmarks).

    Returns:
        One row per field: :data:`METADATA_COLUMNS` (``Metadata_Seconds``: seconds of the image set, process
        start-up shared out), then ``Image_*`` and ``{Nuclei,Cells,Cytoplasm}_*`` features (float64; NaN
        where the image set has no object of the compartment).

    Raises:
        CellResDMError: unreadable input, no CellProfiler, or CellProfiler failed (the message names the
            chunk and image set and quotes the tail of its log).
    """
    import zarr

    log = log or _LOG
    src = Path(dataset_or_predictions)
    workers = settings.workers if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"features.workers must be >= 1, got {workers}")
    try:
        root = zarr.open_group(str(src), mode="r")
        images = root["if"]
        fields = pd.read_parquet(src / "fields.parquet")
    except (OSError, KeyError, ValueError) as exc:
        raise CellResDMError(f"{src}: cannot read `if` and fields.parquet: {exc}") from exc
    if images.ndim != 4 or images.shape[1] != len(layout.IF_CHANNELS) or images.shape[0] != len(fields):
        raise CellResDMError(f"{src}: `if` {images.shape} must be (N, 5, H, W) with N = {len(fields)} fields")
    need = {"plate", "cell_line", "well", "site", "field"}
    if need - set(fields.columns):
        raise CellResDMError(f"{src / 'fields.parquet'} lacks columns {sorted(need - set(fields.columns))}")
    attrs = dict(zarr.open_group(str(reference), mode="r").attrs) if reference else dict(root.attrs)
    if attrs.get("source_shape") and attrs.get("shape"):
        factor = float(attrs["source_shape"][0]) / float(attrs["shape"][0])
        settings = settings.at_pixel_size(settings.segmentation.pixel_size_um * factor)
    n = len(fields) if limit is None else min(limit, len(fields))
    if n == 0:
        raise CellResDMError(f"{src}: no fields to measure")
    fields = fields.iloc[:n].reset_index(drop=True)
    ids = [_image_id(p, f) for p, f in zip(fields["plate"].astype(str), fields["field"].astype(str), strict=True)]
    if len(set(ids)) != len(ids):
        raise CellResDMError(f"{src / 'fields.parquet'} lists a (plate, field) twice")
    exe = resolve_cellprofiler(cellprofiler)
    n_chunks = max(math.ceil(n / settings.chunk_size), min(workers, n))
    chunks = [c for c in np.array_split(np.arange(n), n_chunks) if len(c)]
    log.info(
        "features of %s (%s, %d fields, %s backend): %d chunks, %d workers, %.3f um/px",
        source,
        src,
        n,
        settings.backend,
        len(chunks),
        workers,
        settings.segmentation.pixel_size_um,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"features {source}", unit="image set")
    out = Path(out).absolute()  # CellProfiler runs in a folder of its own: every path it sees is absolute
    out.parent.mkdir(parents=True, exist_ok=True)
    parts: dict[int, pd.DataFrame] = {}
    seconds: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.stem}-cellprofiler-", dir=out.parent) as work_name:
            work = Path(work_name)
            pipeline = work / "features.cppipe"
            pipeline.write_text(make_measurement_pipeline(settings, measure=settings.backend == "cellprofiler"))
            runner = CellProfilerRunner(exe, pipeline, log, bar)

            def job(k: int) -> pd.DataFrame:
                idx = chunks[k]
                chunk_ids = [ids[i] for i in idx]
                chunk_images = np.asarray(images[int(idx[0]) : int(idx[-1]) + 1])
                cp_out, secs = _measure_chunk(runner, work, k, chunk_images, chunk_ids, out.with_suffix(""))
                if settings.backend == "cp_measure":
                    table = _cp_measure_chunk(cp_out, work / f"chunk{k:04d}" / "images", chunk_ids, settings, secs)
                else:
                    table = _chunk_features(cp_out, chunk_ids, settings.aggregate)
                seconds.update(secs)
                return table

            runner.run_parallel(job, len(chunks), workers, parts.__setitem__)
    finally:
        if bar is not None:
            bar.close()
    features = pd.concat([parts[k] for k in sorted(parts)], axis=0, sort=False).reindex(ids)
    features = features.astype("float64")
    meta = pd.DataFrame(
        {
            "Metadata_Plate": fields["plate"].astype(str).to_numpy(),
            "Metadata_Well": fields["well"].astype(str).to_numpy(),
            "Metadata_Site": fields["site"].astype("int64").to_numpy(),
            "Metadata_Field": fields["field"].astype(str).to_numpy(),
            "Metadata_CellLine": fields["cell_line"].astype(str).to_numpy(),
            "Metadata_Source": source,
            "Metadata_Seconds": [float(seconds[i]) for i in ids],
        },
        index=ids,
    )
    table = _sort_columns(pd.concat([meta, features], axis=1)).reset_index(drop=True)
    empty = int((table.get("Image_Count_Cells", pd.Series(dtype=float)) == 0).sum())
    log.info(
        "features of %s: %d image sets x %d features, %.2f s per image set, %d without cells",
        source,
        len(table),
        table.shape[1] - len(METADATA_COLUMNS),
        table["Metadata_Seconds"].mean() if len(table) else float("nan"),
        empty,
    )
    write_parquet(table, out)
    return table


# ----------------------------------------------------------------------------------------------- cp_measure


def _rename_cp_measure(name: str, channel: str | None) -> str:
    """CellProfiler's name of a cp_measure per-object feature (channel appended where CellProfiler does)."""
    if channel is None:  # size and shape: no channel
        return f"AreaShape_{name}"
    if name.startswith("Intensity_") or name.startswith("Location_"):
        return f"{name}_{channel}"
    if name.startswith("Granularity_"):
        return f"{name}_{channel}"
    if name.startswith("RadialDistribution_"):  # RadialDistribution_FracAtD_1of4 -> ..._FracAtD_DNA_1of4
        cat, feat, bins = name.split("_", 2)
        return f"{cat}_{feat}_{channel}_{bins}"
    # texture: AngularSecondMoment_3_00_256 -> Texture_AngularSecondMoment_DNA_3_00_256
    feat, rest = name.split("_", 1)
    return f"Texture_{feat}_{channel}_{rest}"


def measure_objects_cp_measure(
    labels: Mapping[str, np.ndarray], images: np.ndarray, settings: FeatureSettings
) -> dict[str, pd.DataFrame]:
    """Per-object measurements of one image set with cp_measure (``legacy=True`` intensity quantiles).

    Args:
        labels: {compartment: (H, W) int label image} for :data:`COMPARTMENTS` (CellProfiler's labels).
        images: (5, H, W) float in [0, 1], layout.IF_CHANNELS (the values CellProfiler reads: uint16 / 65535).
        settings: feature settings (texture scales, granularity, radial bins, colocalization threshold,
            neighbour distances; pixel sizes scaled like the CellProfiler pipeline).

    Returns:
        {compartment: DataFrame with one row per object (label order 1..N, column ``ObjectNumber``) and
        CellProfiler column names}: AreaShape (with Zernike and Feret), Intensity, Granularity,
        RadialDistribution, Texture, Correlation (Correlation, Manders, RWC, Overlap, K per channel pair)
        and Neighbors (of the three MeasureObjectNeighbors modules). On the same labels these equal
        CellProfiler's to 1e-6 relative (Granularity 5e-5, CellProfiler computes it in float32) except
        Location_MaxIntensity (ties of the maximum), RadialDistribution (cp_measure breaks ties of the
        object centre in C order) and Correlation_RWC (cp_measure's rank weights differ from CellProfiler
        4.2's); Neighbors ignore objects CellProfiler discarded at the border.
    """
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements, get_multimask_measurements
    from cp_measure.core.measurecolocalization import get_correlation_overlap as overlap
    from skimage.segmentation import relabel_sequential

    core = get_core_measurements(legacy=True, sanitize=False)
    corr = get_correlation_measurements(sanitize=False)
    neighbors = get_multimask_measurements()["neighbors"]
    s = settings.segmentation.scale
    imgs = np.asarray(images, dtype=np.float64)
    result: dict[str, pd.DataFrame] = {}
    for obj in COMPARTMENTS:
        # cp_measure wants labels 1..N; ObjectNumber keeps CellProfiler's (an empty cytoplasm leaves a gap)
        lab, _, inverse = relabel_sequential(np.asarray(labels[obj]).astype(np.int32))
        ids = inverse.out_values[inverse.in_values > 0]  # original label of new label 1..N
        cols: dict[str, np.ndarray] = {"ObjectNumber": ids.astype(float)}
        if len(ids) == 0:
            result[obj] = pd.DataFrame(cols)
            continue
        shape = core["sizeshape"](lab, None, calculate_advanced=False, new_features=False)
        if settings.zernike:
            shape |= core["zernike"](lab, None)
        shape |= core["feret"](lab, None)
        cols |= {_rename_cp_measure(k, None): np.asarray(v, float) for k, v in shape.items()}
        for channel, img in zip(layout.IF_CHANNELS, imgs, strict=True):
            feats = dict(core["intensity"](lab, img))
            feats |= core["granularity"](
                lab,
                img,
                subsample_size=settings.granularity_subsample,
                image_sample_size=settings.granularity_background_subsample,
                element_size=_px(settings.granularity_radius, s),
                granular_spectrum_length=settings.granularity_range,
            )
            with np.errstate(invalid="ignore", divide="ignore"):  # empty rings give NaN, as in CellProfiler
                feats |= core["radial_distribution"](lab, img, bin_count=settings.radial_bins)
            for scale in (_px(v, s) for v in settings.texture_scales):
                texture = core["texture"](lab, img, scale=scale, gray_levels=settings.texture_gray_levels)
                # an object too small for the offset: CellProfiler reports 0, cp_measure NaN
                feats |= {k: np.nan_to_num(np.asarray(v, float), nan=0.0) for k, v in texture.items()}
            cols |= {_rename_cp_measure(k, channel): np.asarray(v, float) for k, v in feats.items()}
        thr = int(settings.colocalization_threshold)
        for a in range(len(layout.IF_CHANNELS)):
            for b in range(a + 1, len(layout.IF_CHANNELS)):
                ca, cb = layout.IF_CHANNELS[a], layout.IF_CHANNELS[b]
                p = corr["pearson"](imgs[a], imgs[b], lab)  # its per-object slope CellProfiler does not report
                cols[f"Correlation_Correlation_{ca}_{cb}"] = np.asarray(p["Correlation_Pearson"], float)
                o = {k: np.asarray(v, float) for k, v in overlap(imgs[a], imgs[b], lab, thr=thr).items()}
                # an object with no pixel above both thresholds: cp_measure gives 0, CellProfiler NaN (0 / 0),
                # unless no object of the image has such pixels (then CellProfiler gives 0 too)
                empty = (o["Correlation_Overlap"] == 0) & (o["Correlation_K_1"] == 0) & (o["Correlation_K_2"] == 0)
                empty &= not empty.all()
                cols[f"Correlation_Overlap_{ca}_{cb}"] = np.where(empty, np.nan, o["Correlation_Overlap"])
                cols[f"Correlation_K_{ca}_{cb}"] = np.where(empty, np.nan, o["Correlation_K_1"])
                cols[f"Correlation_K_{cb}_{ca}"] = np.where(empty, np.nan, o["Correlation_K_2"])
                m = corr["manders_fold"](imgs[a], imgs[b], lab, thr=thr)
                cols[f"Correlation_Manders_{ca}_{cb}"] = np.asarray(m["Correlation_Manders_1"], float)
                cols[f"Correlation_Manders_{cb}_{ca}"] = np.asarray(m["Correlation_Manders_2"], float)
                r = corr["rwc"](imgs[a], imgs[b], lab, thr=thr)
                cols[f"Correlation_RWC_{ca}_{cb}"] = np.asarray(r["Correlation_RWC_1"], float)
                cols[f"Correlation_RWC_{cb}_{ca}"] = np.asarray(r["Correlation_RWC_2"], float)
        # the three MeasureObjectNeighbors modules of the pipeline
        if obj == "Cells":
            dist = _px(settings.neighbor_distance_cells, s)
            methods = [("Within a specified distance", dist), ("Adjacent", dist)]
        elif obj == "Nuclei":
            methods = [("Within a specified distance", _px(settings.neighbor_distance_nuclei, s))]
        else:
            methods = []
        for method, dist in methods:
            nb = neighbors(lab, lab, distance_method=method, distance=dist)
            cols |= {k: np.asarray(v, float) for k, v in nb.items() if "ObjectNumber" not in k}
        result[obj] = pd.DataFrame(cols)
    return result


def _cp_measure_chunk(
    cp_out: Path, pics: Path, ids: list[str], settings: FeatureSettings, seconds: dict[str, float]
) -> pd.DataFrame:
    """Per-image features of a chunk from CellProfiler's labels and cp_measure; adds its time to ``seconds``."""
    image = _read_export(cp_out, "Image")
    counts = image.set_index(image["Metadata_Field"].astype(str))
    rows = []
    for i in ids:
        t0 = time.perf_counter()
        labels = _labels_of(cp_out, i)
        imgs = np.stack([read_tiff(pics / f"{i}_{c}.tiff", ndim=2) for c in layout.IF_CHANNELS]) / 65535.0
        per_object = measure_objects_cp_measure(labels, imgs, settings)
        row: dict[str, float] = {f"Image_Count_{o}": float(counts.loc[i, f"Count_{o}"]) for o in COMPARTMENTS}
        for obj, table in per_object.items():
            values = table.drop(columns="ObjectNumber").replace([np.inf, -np.inf], np.nan)
            row |= {f"{obj}_{k}": v for k, v in values.agg(settings.aggregate).items()}
        rows.append(row)
        seconds[i] += time.perf_counter() - t0
    return pd.DataFrame(rows, index=ids)


# ----------------------------------------------------------------------------------------------- Table 2


def feature_category(column: str) -> str | None:
    """Table 2 category of a feature column (``Cells_Intensity_MeanIntensity_DNA`` -> ``Intensity``), or
    None for metadata and measurements outside :data:`CATEGORIES`."""
    parts = column.split("_", 2)
    if len(parts) < 3 or parts[0] not in ("Image", *COMPARTMENTS):
        return None
    return parts[1] if parts[1] in CATEGORIES else None


_KEYS = ["Metadata_Plate", "Metadata_Field"]


def _constant(v: np.ndarray) -> bool:
    """True when ``v`` varies by no more than float rounding of its magnitude."""
    return bool(np.ptp(v) <= 1e-12 * max(float(np.abs(v).max()), 1e-300))


def _pearson_per_feature(real: pd.DataFrame, synth: pd.DataFrame, min_images: int) -> pd.Series:
    """Pearson r per column over rows where both are finite; NaN where fewer than ``min_images`` pairs or
    either side is constant."""
    out = {}
    for col in real.columns:
        x, y = real[col].to_numpy(float), synth[col].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < min_images or _constant(x[ok]) or _constant(y[ok]):
            continue  # too few pairs, or r undefined
        x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
        sx, sy = np.sqrt((x * x).sum()), np.sqrt((y * y).sum())
        out[col] = float(np.clip((x * y).sum() / (sx * sy), -1.0, 1.0))
    return pd.Series(out, dtype=float)


def feature_correlation(
    real: pd.DataFrame,
    synthetic_tables: Mapping[str, pd.DataFrame],
    by: Sequence[str] = ("category",),
    min_images: int = 3,
) -> pd.DataFrame:
    """Mean Pearson r between real and synthetic per-image features, per source and category (Table 2).

    For each source and feature (columns with a :func:`feature_category`), r across the images present in
    both tables (matched on ``Metadata_Plate`` and ``Metadata_Field``; pairs with a NaN dropped); a feature
    with fewer than ``min_images`` pairs or constant on either side is dropped. r is then averaged per
    category (AreaShape is its own category).

    Args:
        real: features of the real images (:func:`extract_features` table).
        synthetic_tables: {source: features of its predictions}.
        by: ``("category",)``, or ``("cell_line", "category")`` to add one block per cell line (images of
            that line only) after the all-lines block.
        min_images: fewest image pairs for a feature's r.

    Returns:
        Long table with :data:`CORRELATION_COLUMNS`: source, cell_line (``all`` or the line), category,
        n_features (features with an r), r (their mean).
    """
    if set(by) - {"category", "cell_line"} or "category" not in by:
        raise ConfigError(f"feature_correlation by must be ('category',) or ('cell_line', 'category'), got {by}")
    for name, table in {"real": real, **synthetic_tables}.items():
        missing = [c for c in _KEYS if c not in table.columns]
        if missing:
            raise CellResDMError(f"feature table of {name} lacks {missing}")
    features = [c for c in real.columns if feature_category(c) is not None]
    rows = []
    for source, synth in synthetic_tables.items():
        common = [c for c in features if c in synth.columns]
        merged = real[[*_KEYS, "Metadata_CellLine", *common]].merge(
            synth[[*_KEYS, *common]], on=_KEYS, suffixes=("", "__synthetic"), validate="one_to_one"
        )
        if merged.empty:
            raise CellResDMError(f"no image of {source} matches a real image on {_KEYS}")
        groups = [("all", merged)]
        if "cell_line" in by:
            groups += [(str(line), g) for line, g in merged.groupby("Metadata_CellLine", sort=True)]
        for line, g in groups:
            r = _pearson_per_feature(
                g[common], g[[f"{c}__synthetic" for c in common]].set_axis(common, axis=1), min_images
            )
            for cat in CATEGORIES:
                vals = r[r.index.map(feature_category) == cat] if len(r) else r
                rows.append(
                    {
                        "source": source,
                        "cell_line": line,
                        "category": cat,
                        "n_features": int(len(vals)),
                        "r": float(vals.mean()) if len(vals) else float("nan"),
                    }
                )
    return pd.DataFrame(rows, columns=list(CORRELATION_COLUMNS))


def table2(correlation: pd.DataFrame, cell_line: str = "all") -> pd.DataFrame:
    """Table 2 layout of :func:`feature_correlation` output: categories as rows, ``n_features`` (the most
    over sources) then one column per source with its mean r."""
    sub = correlation[correlation["cell_line"] == cell_line]
    wide = sub.pivot(index="category", columns="source", values="r")
    wide = wide.reindex(index=[c for c in CATEGORIES if c in set(sub["category"])])
    wide = wide[list(dict.fromkeys(sub["source"]))]
    n = sub.groupby("category")["n_features"].max().reindex(wide.index)
    wide.insert(0, "n_features", n.astype(int))
    wide.columns.name = None
    return wide


def write_table2(
    real: str | os.PathLike,
    synthetic: Mapping[str, str | os.PathLike],
    out_csv: str | os.PathLike,
    out_md: str | os.PathLike | None = None,
    by: Sequence[str] = ("cell_line", "category"),
    min_images: int = 3,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Read feature parquets, compute :func:`feature_correlation` and write it (long CSV, atomically), plus
    a Markdown file with Table 2 for all lines and one per cell line. Returns the long table."""
    log = log or _LOG

    def read(path: str | os.PathLike) -> pd.DataFrame:
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise CellResDMError(f"cannot read feature table {path}: {exc}") from exc

    corr = feature_correlation(read(real), {k: read(v) for k, v in synthetic.items()}, by=by, min_images=min_images)
    with atomic_path(out_csv) as tmp:
        corr.to_csv(tmp, index=False)
    if out_md is not None:
        blocks = []
        for line in dict.fromkeys(corr["cell_line"]):
            t = table2(corr, line)
            blocks.append(f"### Feature correlation (Pearson r, real vs synthetic), cell line: {line}\n\n")
            blocks[-1] += t.to_markdown(floatfmt=("", ".0f", *[".3f"] * (t.shape[1] - 1))) + "\n"
        with atomic_path(out_md) as tmp:
            tmp.write_text("\n".join(blocks))
    for source in dict.fromkeys(corr["source"]):
        sub = corr[(corr["source"] == source) & (corr["cell_line"] == "all")]
        means = dict(zip(sub["category"], sub["r"].round(3), strict=True))
        log.info("feature correlation %s: %s", source, json.dumps(means))
    return corr
