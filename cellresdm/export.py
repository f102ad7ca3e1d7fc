"""Model files that travel: one self-contained file per trained method, and the loader that checks it.

:func:`export_model` reads a trained ``models/{method}/model.pt`` and the training dataset it was trained on and
writes one torch file (atomically) holding everything another machine needs to run the method on a new plate::

    format, format_version       "cellresdm-model", :data:`FORMAT_VERSION`
    package_version              cellresdm.__version__ of the writer
    method, step                 the method's name and its training step
    config                       what cellresdm.methods.build_method needs ({"method": name, name: section})
    ema                          the EMA weights (state dict of the method's network)
    vqgan                        latent methods only: the VQ-GAN's config (its weights are part of ``ema``)
    inputs                       planes (layout.BF_CHANNELS order), pixel_size_um, field_size (H, W),
                                 source_shape (H, W of the native fields), resized (bool)
    outputs                      channels (layout.IF_CHANNELS + layout.OBJECT_CHANNELS), range [0, 1]
    normalisation                scope, low, high (percentiles), channels normalised and the training plates'
                                 percentile values: one record per plate and channel (plate, channel, low, high,
                                 images: 0 for plate scope, else the median over that many images)
    training_plates              the plates of the training dataset, and those that were illumination-corrected
    qc_reference                 optional: robust (median, spread) of the training fields' brightfield statistics
                                 and of the model's per-channel uncertainty on them (cellresdm.predict)

:func:`load_exported_model` reads such a file, checks format, version, method and, given the inputs of a plate
(:class:`PlateInputs`, e.g. from :func:`plate_inputs_of_dataset`), that the model takes the plate's planes at its
pixel size with the same normalisation scope; then it rebuilds the method with its weights. Every problem raises
one :class:`CellResDMError` naming the file and the mismatch.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from packaging.version import InvalidVersion, Version

import cellresdm
from cellresdm import layout
from cellresdm.errors import CellResDMError
from cellresdm.io import atomic_path, load_torch_dict
from cellresdm.stores import open_dataset

_LOG = logging.getLogger(__name__)

#: ``format`` of an exported model file.
EXPORT_FORMAT = "cellresdm-model"
#: Layout version of the file: a reader accepts files of this version only.
FORMAT_VERSION = 1
#: Relative difference of pixel sizes a model tolerates (resampling to 512 px is not exact to the last digit).
PIXEL_SIZE_TOLERANCE = 0.02
#: Keys every exported file has.
_KEYS = (
    "format",
    "format_version",
    "package_version",
    "method",
    "step",
    "config",
    "ema",
    "inputs",
    "outputs",
    "normalisation",
    "training_plates",
)


@dataclass(frozen=True)
class PlateInputs:
    """What a plate offers a model: checked against an exported model by :func:`load_exported_model`.

    Attributes:
        name: the plate or dataset named in errors.
        planes: brightfield planes the plate has, in the order the model gets them.
        pixel_size_um: pixel size of the fields the model will see (after any resize).
        norm_scope: ``"plate"`` or ``"image"``: how the plate's intensities are normalised.
    """

    name: str
    planes: tuple[str, ...]
    pixel_size_um: float
    norm_scope: str


def dataset_pixel_size(attrs: dict[str, Any], native_pixel_size_um: float) -> float:
    """Pixel size (um) of a dataset store's fields: the native size scaled by source over stored height."""
    source, shape = attrs.get("source_shape"), attrs.get("shape")
    if not source or not shape:
        return float(native_pixel_size_um)
    return float(native_pixel_size_um) * float(source[0]) / float(shape[0])


def plate_inputs_of_dataset(dataset: str | os.PathLike, native_pixel_size_um: float) -> PlateInputs:
    """The :class:`PlateInputs` of a dataset store (config key ``groundtruth.pixel_size_um`` is the native size)."""
    store = open_dataset(dataset, arrays=())
    attrs = store.attrs
    return PlateInputs(
        name=str(dataset),
        planes=tuple(attrs.get("bf_channels", layout.BF_CHANNELS)),
        pixel_size_um=dataset_pixel_size(attrs, native_pixel_size_um),
        norm_scope=str(store.attr("scope")),
    )


def _norm_records(store: Any) -> list[dict[str, Any]]:
    """Percentile values of the training dataset per plate and channel (the median over images for image scope)."""
    norm = store.norm()
    records = []
    for (plate, channel), group in norm.groupby(["plate", "channel"], sort=False):
        image_scope = (group["scope"] == "image").any()
        records.append(
            {
                "plate": str(plate),
                "channel": str(channel),
                "low": float(group["low"].median()),
                "high": float(group["high"].median()),
                "images": int(len(group)) if image_scope else 0,
            }
        )
    return records


def export_model(
    method: str,
    model_path: str | os.PathLike,
    dataset_path: str | os.PathLike,
    out: str | os.PathLike,
    native_pixel_size_um: float,
    qc_reference: dict[str, Any] | None = None,
) -> Path:
    """Write the self-contained model file of ``method`` (module docstring) to ``out``, atomically.

    Args:
        method: the method's name (its ``model.pt`` must say the same).
        model_path: the trained ``models/{method}/model.pt``.
        dataset_path: the training dataset store ``datasets/train.zarr`` (planes, field size, normalisation).
        out: the file to write.
        native_pixel_size_um: pixel size of the native fields (config ``groundtruth.pixel_size_um``).
        qc_reference: the training plates' brightfield and uncertainty statistics the predict plates are
            compared with (:func:`cellresdm.predict.qc_reference`), stored as key ``qc_reference``.

    Returns:
        ``out``.

    Raises:
        CellResDMError: naming the model file when it is missing, unreadable, of another method or its EMA
            weights do not fit the method; naming the dataset when it is missing or invalid.
    """
    from cellresdm.methods import build_method

    model_path, out = Path(model_path), Path(out)
    if not model_path.is_file():
        raise CellResDMError(f"{model_path}: model file is missing (train {method} first)")
    checkpoint = load_torch_dict(model_path, "CellResDM model file")
    for key in ("config", "ema"):
        if key not in checkpoint:
            raise CellResDMError(f"{model_path}: not a trained CellResDM model (no {key!r})")
    config = dict(checkpoint["config"])
    if config.get("method") != method:
        raise CellResDMError(f"{model_path}: holds a model of method {config.get('method')!r}, not {method!r}")
    try:
        built = build_method(method, config)
        built.network.load_state_dict(checkpoint["ema"])
    except (KeyError, RuntimeError) as exc:
        raise CellResDMError(f"{model_path}: the stored {method} config or weights do not fit ({exc})") from exc
    store = open_dataset(dataset_path, arrays=())
    attrs = store.attrs
    planes = list(attrs.get("bf_planes", attrs.get("bf_channels", layout.BF_CHANNELS)))
    shape = attrs.get("shape")
    if not shape:
        raise CellResDMError(f"{dataset_path}: dataset lacks attribute 'shape'")
    content: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": cellresdm.__version__,
        "method": method,
        "step": int(checkpoint.get("step", 0)),
        "config": config,
        "ema": checkpoint["ema"],
        "inputs": {
            "planes": planes,
            "pixel_size_um": dataset_pixel_size(attrs, native_pixel_size_um),
            "field_size": [int(s) for s in shape],
            "source_shape": [int(s) for s in attrs.get("source_shape", shape)],
            "resized": attrs.get("resize") is not None,
        },
        "outputs": {
            "channels": list(layout.IF_CHANNELS) + list(layout.OBJECT_CHANNELS),
            "range": [0.0, 1.0],
        },
        "normalisation": {
            "scope": str(store.attr("scope")),
            "low": float(store.attr("low")),
            "high": float(store.attr("high")),
            "channels": list(attrs.get("bf_channels", layout.BF_CHANNELS)) + list(attrs.get("if_channels", [])),
            "percentiles": _norm_records(store),
        },
        "training_plates": {
            "plates": [str(p) for p in attrs.get("plates", [])],
            "illumination_corrected": [str(p) for p in attrs.get("illumination_corrected", [])],
        },
    }
    if qc_reference is not None:
        content["qc_reference"] = qc_reference
    autoencoder = getattr(built, "autoencoder", None)
    if autoencoder is not None:
        content["vqgan"] = {"config": asdict(autoencoder.config)}
    with atomic_path(out) as tmp:
        torch.save(content, tmp)
    _LOG.info(
        "%s: exported %s (step %d) for %s planes at %.3f um/px",
        out,
        method,
        content["step"],
        planes,
        content["inputs"]["pixel_size_um"],
    )
    return out


@dataclass(frozen=True, eq=False)
class ExportedModel:
    """A loaded, checked model file: ``method`` is the rebuilt method with its EMA weights (eval mode), ``info``
    the file's content without the weights (module docstring)."""

    path: Path
    method: Any
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.info["method"])


def _compatible(path: Path, written: Any) -> None:
    """Raise when the package version that wrote the file cannot be read by this one: the same major version,
    and for 0.x the same minor version (semantic versioning)."""
    try:
        theirs, ours = Version(str(written)), Version(cellresdm.__version__)
    except InvalidVersion as exc:
        raise CellResDMError(f"{path}: unreadable package version {written!r} in the model file") from exc
    same = theirs.major == ours.major and (ours.major > 0 or theirs.minor == ours.minor)
    if not same:
        raise CellResDMError(
            f"{path}: written by cellresdm {theirs}, which is incompatible with this cellresdm {ours}; "
            f"export the model again with cellresdm {ours.major}.{ours.minor}"
        )


def _check_inputs(
    path: Path,
    info: dict[str, Any],
    expect: PlateInputs,
    tolerance: float = PIXEL_SIZE_TOLERANCE,
    pixel_size_mismatch: str = "error",
) -> None:
    inputs, scope = info["inputs"], info["normalisation"]["scope"]
    planes = tuple(inputs["planes"])
    lacking = [p for p in planes if p not in expect.planes]
    if lacking:
        raise CellResDMError(
            f"{path}: the model takes planes {list(planes)} but {expect.name} has {list(expect.planes)} "
            f"(lacks {', '.join(lacking)})"
        )
    ours, theirs = float(inputs["pixel_size_um"]), float(expect.pixel_size_um)
    if not math.isclose(ours, theirs, rel_tol=tolerance):
        message = (
            f"{path}: the model was trained at {ours:.4g} um/px but {expect.name} has {theirs:.4g} um/px "
            f"(tolerance {tolerance:.0%}); resize the plate's fields to the model's field size"
        )
        if pixel_size_mismatch == "error":
            raise CellResDMError(message)
        _LOG.warning("%s (predict.pixel_size_mismatch: warn)", message)
    if scope != expect.norm_scope:
        raise CellResDMError(
            f"{path}: the model was trained on intensities normalised per {scope} but {expect.name} is normalised "
            f"per {expect.norm_scope} (config key dataset.norm_scope)"
        )


def read_export(path: str | os.PathLike) -> dict[str, Any]:
    """The content of an exported model file, checked for its keys, format and version (weights not loaded).

    Raises:
        CellResDMError: naming ``path`` when it is missing, truncated or unreadable, not an exported model, of
            another format version or written by an incompatible package version.
    """
    path = Path(path)
    if not path.is_file():
        raise CellResDMError(f"{path}: exported model file is missing (run `cellresdm export METHOD`)")
    content = load_torch_dict(path, "exported CellResDM model")
    if content.get("format") != EXPORT_FORMAT:
        raise CellResDMError(f"{path}: not an exported CellResDM model (format {content.get('format')!r})")
    if content.get("format_version") != FORMAT_VERSION:
        raise CellResDMError(
            f"{path}: model file format version {content.get('format_version')!r}, this cellresdm reads version "
            f"{FORMAT_VERSION} only"
        )
    missing = [key for key in _KEYS if key not in content]
    if missing:
        raise CellResDMError(f"{path}: exported model lacks key(s) {', '.join(missing)}")
    _compatible(path, content["package_version"])
    return content


def load_exported_model(
    path: str | os.PathLike,
    expect: PlateInputs | None = None,
    method: str | None = None,
    device: str | torch.device = "cpu",
    tolerance: float = PIXEL_SIZE_TOLERANCE,
    pixel_size_mismatch: str = "error",
) -> ExportedModel:
    """Load an exported model file and rebuild its method with the EMA weights.

    Args:
        path: the file written by :func:`export_model`.
        expect: the inputs of the plate the model will run on; None skips the input checks.
        method: the method the caller wants; None accepts any.
        device: where the network goes.
        tolerance: relative pixel-size difference accepted.
        pixel_size_mismatch: ``"error"`` raises beyond ``tolerance``, ``"warn"`` logs a warning.

    Returns:
        The checked :class:`ExportedModel` (network in eval mode on ``device``).

    Raises:
        CellResDMError: naming ``path`` and the mismatch: missing, truncated or foreign file, other format or
            incompatible package version, another method, other planes, another pixel size (beyond
            :data:`PIXEL_SIZE_TOLERANCE`), another normalisation scope, or weights that do not fit.
    """
    from cellresdm.methods import build_method

    path = Path(path)
    content = read_export(path)
    name = content["method"]
    if method is not None and name != method:
        raise CellResDMError(f"{path}: holds a model of method {name!r}, not {method!r}")
    if expect is not None:
        _check_inputs(path, content, expect, tolerance, pixel_size_mismatch)
    config = content["config"]
    try:
        if "vqgan" in content:
            from cellresdm.methods.cellresdm_latent import CellResDMLatent
            from cellresdm.nets.vqgan import VQGAN, VQGANConfig

            fields = dict(content["vqgan"]["config"])
            fields["channel_mult"] = tuple(fields["channel_mult"])
            built = CellResDMLatent.from_autoencoder(config[name], VQGAN(VQGANConfig(**fields)), name=name)
        else:
            built = build_method(name, config)
        built.network.load_state_dict(content["ema"])
    except CellResDMError as exc:
        raise CellResDMError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CellResDMError(f"{path}: the stored {name} config or weights do not fit ({exc})") from exc
    built.network.to(device).eval()
    info = {key: value for key, value in content.items() if key != "ema"}
    return ExportedModel(path, built, info)
