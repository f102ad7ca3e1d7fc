"""StarDist nuclei baselines: StarDist2D trained on brightfield (``stardist_bf``) or on the real DNA channel
(``stardist_if``), with the CellProfiler nuclei labels of the dataset as targets.

Training (:func:`train_stardist`) reads the ``train`` and ``val`` splits (cellresdm.dataset), trains a
StarDist2D from scratch (no pretrained model is ever downloaded), tunes the probability and NMS thresholds on
the validation split and writes a StarDist model folder::

    config.json        StarDist Config2D (csbdeep format; loadable with StarDist2D(None, name, basedir))
    weights_best.h5    weights of the epoch with the lowest validation loss (the ones used for prediction)
    weights_last.h5    weights after the last epoch
    thresholds.json    {"prob": float, "nms": float} tuned on the validation split
    training.json      settings, per-epoch history (loss, val_loss, lr, seconds), data, thresholds

The folder is written with :func:`cellresdm.io.atomic_dir`, so it exists only once training finished.

Resuming: while training, ``.{out_dir.name}.partial/checkpoint/`` beside ``out_dir`` holds the last and the best
weights, the Adam state, the learning-rate-on-plateau counters and ``state.json`` (epochs done, history, the
settings and data it belongs to). It is replaced atomically after every epoch, so a rerun after an interruption
loads it and continues with the next epoch (an interrupted epoch is redone). A checkpoint made with other
settings or data is discarded and training starts over. The partial folder is removed once the model is written.

Prediction (:func:`predict_stardist`) writes the shared instances store (zarr v3 group)::

    nuclei          (N, H, W) int32 instance labels, chunks (1, H, W)
    field table     copy of the test dataset's field table
    attrs           source, objects ["nuclei"], seconds_per_field, device, settings, thresholds {"prob", "nms"}
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cellresdm import layout
from cellresdm.config import settings_values
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.io import atomic_dir, atomic_path
from cellresdm.stores import DatasetStore, create_instances, open_dataset

_LOG = logging.getLogger(__name__)

#: Baseline name -> the input it is trained on.
BASELINES: dict[str, str] = {"stardist_bf": "bf", "stardist_if": "dna"}
#: Input name -> (dataset array, channels taken from it).
_INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "bf": ("bf", tuple(range(len(layout.BF_CHANNELS)))),
    "dna": ("if", (layout.IF_CHANNELS.index("DNA"),)),
}
_N_CHANNELS = {"bf": len(layout.BF_CHANNELS), "if": len(layout.IF_CHANNELS), "labels": len(layout.OBJECT_CHANNELS)}
_NUCLEI = layout.OBJECT_CHANNELS.index("nuclei")
_MODEL_FILES = ("config.json", "weights_best.h5", "thresholds.json", "training.json")
_STATE_VERSION = 1


@dataclass(frozen=True)
class StarDistSettings:
    """Settings of one StarDist baseline (config section ``stardist``; the schema holds the defaults, StarDist's
    own 2D defaults (the paper setting), and checks each key).

    Attributes:
        input: ``"bf"`` (the 3 brightfield planes) or ``"dna"`` (the real DNA channel), from the baseline.
        n_rays: star-convex polygon rays.
        grid: output subsampling (y, x) of the probability and distance maps; powers of 2.
        epochs: training epochs.
        steps_per_epoch: optimizer steps per epoch.
        patch_size: side of the square training patches, px; divisible by ``2**unet_depth * grid``.
        batch_size: patches per step.
        learning_rate: Adam learning rate (halved after 40 epochs without validation improvement, StarDist's
            default plateau rule).
        unet_depth: UNet resolution levels below the input.
        unet_n_filter_base: filters of the first UNet level (doubled per level).
        seed: seed of the initial weights, patch sampling and augmentation.
        augment: random flips and 90-degree rotations of the training patches.
        tile_size: prediction tiles are at most this many pixels per side (``n_tiles`` of predict_instances).
    """

    input: str
    n_rays: int
    grid: tuple[int, int]
    epochs: int
    steps_per_epoch: int
    patch_size: int
    batch_size: int
    learning_rate: float
    unet_depth: int
    unet_n_filter_base: int
    seed: int
    augment: bool
    tile_size: int

    def __post_init__(self) -> None:
        # checks the schema cannot express: powers of 2, and sizes the UNet and the grid divide
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"stardist.{name} must be {rule}, got {getattr(self, name)!r}")

        need(self.input in _INPUTS, "input", f"one of {sorted(_INPUTS)}")
        need(all(g >= 1 and g & (g - 1) == 0 for g in self.grid), "grid", "two powers of 2 (y, x)")
        div = 2**self.unet_depth * max(self.grid)
        need(self.patch_size % div == 0, "patch_size", f"a positive multiple of 2**unet_depth * grid = {div}")
        need(self.tile_size >= div, "tile_size", f"an integer >= {div}")

    @classmethod
    def from_config(cls, section: dict[str, Any], source: str) -> StarDistSettings:
        """Settings of baseline ``source`` (a name in :data:`BASELINES`, which decides the input) from the
        validated ``stardist`` config section (:func:`cellresdm.config.section`); lists become tuples and keys
        that are not settings (``baselines``) are ignored."""
        if source not in BASELINES:
            raise ConfigError(f"unknown StarDist baseline {source!r}; known: {sorted(BASELINES)}")
        return cls(input=BASELINES[source], **settings_values(cls, section, "stardist", skip=("input",)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the settings (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))


# ----------------------------------------------------------------------------------------------- data


def _open_split(path: str | Path, input_name: str, need_labels: bool) -> DatasetStore:
    """The dataset split with its input array (and the labels) opened and checked (lazy zarr arrays)."""
    key, _ = _INPUTS[input_name]
    return open_dataset(path, arrays=[key, "labels"] if need_labels else [key])


def _field_input(array: Any, index: int, input_name: str) -> np.ndarray:
    """(H, W, C) float32 network input of field ``index`` (channel-last, values as stored in [0, 1])."""
    channels = list(_INPUTS[input_name][1])
    return np.moveaxis(np.asarray(array[index, channels], dtype=np.float32), 0, -1)


def load_pairs(path: str | Path, input_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and nuclei targets of every field of a dataset split.

    Args:
        path: a split written by ``cellresdm.dataset.build_dataset``.
        input_name: ``"bf"`` or ``"dna"``.

    Returns:
        X (N, H, W, C) float32 (C = 3 for bf, 1 for dna) and Y (N, H, W) uint16 nuclei instance labels with
        holes filled (StarDist targets must be star-convex objects without holes). Both are held in memory
        (X takes N * H * W * C * 4 bytes), as StarDist's data generator samples patches from arrays.
    """
    from stardist import fill_label_holes

    if input_name not in _INPUTS:
        raise ConfigError(f"stardist input must be one of {sorted(_INPUTS)}, got {input_name!r}")
    split = _open_split(path, input_name, need_labels=True)
    array, labels = split[_INPUTS[input_name][0]], split["labels"]
    n = array.shape[0]
    if n == 0:
        raise CellResDMError(f"dataset {path} holds no fields (empty split)")
    channels = list(_INPUTS[input_name][1])
    x = np.moveaxis(np.asarray(array[:, channels], dtype=np.float32), 1, -1)
    y = np.stack([fill_label_holes(np.asarray(labels[i, _NUCLEI]).astype(np.uint16)) for i in range(n)])
    return np.ascontiguousarray(x), y


# ----------------------------------------------------------------------------------------------- runtime


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _limit_threads(threads: int | None, log: logging.Logger) -> None:
    """Keep TensorFlow (and StarDist's OpenMP code) to ``threads`` cores (default: the cores of this job).

    TensorFlow fixes its thread pools when it first runs an op; later calls keep the first setting.
    """
    n = int(threads) if threads else _cores()
    os.environ.setdefault("OMP_NUM_THREADS", str(n))  # read when stardist's compiled code is first loaded
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ info lines would flood the step log
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, n))
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != n:
            log.warning("TensorFlow is already initialised with %s threads; asked for %d", current or "all", n)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence the stdout prints of StarDist/csbdeep and Keras' progress bar (we log per epoch instead)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _seed(*keys: int) -> int:
    """A 32-bit seed that is a fixed function of ``keys`` (np.random.seed takes 32 bits)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class _Dihedral:
    """Augmenter of StarDist's data generator: a random one of the 8 flips/90-degree rotations of a patch."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = int(self.rng.integers(4))
        x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
        if self.rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _config(settings: StarDistSettings, n_channel_in: int) -> Any:
    from stardist.models import Config2D

    p = settings.patch_size
    return Config2D(
        n_rays=settings.n_rays,
        grid=settings.grid,
        n_channel_in=n_channel_in,
        unet_n_depth=settings.unet_depth,
        unet_n_filter_base=settings.unet_n_filter_base,
        train_patch_size=(p, p),
        train_batch_size=settings.batch_size,
        train_epochs=settings.epochs,
        train_steps_per_epoch=settings.steps_per_epoch,
        train_learning_rate=settings.learning_rate,
        train_tensorboard=False,
        # checkpoints are written by _EpochCheckpoint (atomically, with the optimizer state)
        train_checkpoint=None,
        train_checkpoint_last=None,
        train_checkpoint_epoch=None,
        use_gpu=False,
    )


# ----------------------------------------------------------------------------------------------- checkpoints


def _save_weights(model: Any, path: Path) -> None:
    with atomic_path(path, suffix=".h5") as tmp:
        model.keras_model.save_weights(str(tmp))  # csbdeep saves a legacy .h5 that StarDist2D loads


def _optimizer_arrays(model: Any) -> dict[str, np.ndarray]:
    return {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(model.keras_model.optimizer.variables)}


def _restore_optimizer(model: Any, path: Path) -> None:
    """Load the Adam state (step, learning rate, moments) saved by :class:`_EpochCheckpoint`."""
    opt = model.keras_model.optimizer
    opt.build(model.keras_model.trainable_variables)  # fit() keeps an optimizer that is already built
    with np.load(path) as saved:
        if len(saved.files) != len(opt.variables):
            raise CellResDMError(f"{path}: optimizer state does not fit the model ({len(saved.files)} arrays)")
        for i, var in enumerate(opt.variables):
            var.assign(saved[f"v{i}"])


def _plateau(model: Any) -> Any | None:
    from keras.callbacks import ReduceLROnPlateau

    return next((cb for cb in model.callbacks if isinstance(cb, ReduceLROnPlateau)), None)


def _make_epoch_callback(
    model: Any,
    work: Path,
    state: dict[str, Any],
    settings: StarDistSettings,
    bar: Any,
    log: logging.Logger,
) -> Any:
    """A Keras callback that checkpoints ``work/checkpoint`` after every epoch and logs it (see module doc)."""
    import keras

    start = int(state["epoch"])

    class _EpochCheckpoint(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            # Keras resets the plateau counters at train begin; a resumed run gets its saved ones back.
            plateau = _plateau(model)
            if plateau is not None and state.get("plateau"):
                for name, value in state["plateau"].items():
                    setattr(plateau, name, value)
            np.random.seed(_seed(settings.seed, 1, start))  # fresh patch draws after a resume
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            done = start + epoch + 1
            seconds = time.perf_counter() - self.t0
            lr = float(model.keras_model.optimizer.learning_rate.numpy())
            entry = {
                "epoch": done,
                "loss": float(logs["loss"]),
                "val_loss": float(logs["val_loss"]),
                "lr": lr,
                "seconds": seconds,
            }
            if not (math.isfinite(entry["loss"]) and math.isfinite(entry["val_loss"])):
                # the checkpoint keeps the previous epoch; a rerun with a lower learning rate can go on from it
                raise CellResDMError(
                    f"stardist training diverged in epoch {done} (loss {entry['loss']}, val_loss "
                    f"{entry['val_loss']}); lower stardist.learning_rate"
                )
            improved = entry["val_loss"] < state["best_val_loss"]
            state["epoch"] = done
            state["history"].append(entry)
            if improved:
                state["best_val_loss"] = entry["val_loss"]
            plateau = _plateau(model)
            if plateau is not None:
                state["plateau"] = {
                    "wait": int(plateau.wait),
                    "best": float(plateau.best),
                    "cooldown_counter": int(plateau.cooldown_counter),
                }
            previous = work / "checkpoint"
            with atomic_dir(previous) as tmp:
                _save_weights(model, tmp / "weights_last.h5")
                if improved:
                    _save_weights(model, tmp / "weights_best.h5")
                else:
                    shutil.copy2(previous / "weights_best.h5", tmp / "weights_best.h5")
                np.savez(tmp / "optimizer.npz", **_optimizer_arrays(model))
                (tmp / "state.json").write_text(json.dumps(state, indent=1))
            log.info(
                "stardist epoch %d/%d: loss %.4f, val_loss %.4f%s, lr %.2e, %.1f s",
                done,
                settings.epochs,
                entry["loss"],
                entry["val_loss"],
                " (best)" if improved else "",
                lr,
                seconds,
            )
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", val_loss=f"{entry['val_loss']:.3f}")
            self.t0 = time.perf_counter()

    return _EpochCheckpoint()


def _data_signature(path: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {
        "path": str(Path(path).resolve()),
        "shape": list(x.shape),
        "n_objects": int(sum(len(np.unique(v)) - 1 for v in y)),
    }


def _load_checkpoint(work: Path, expected: dict[str, Any], log: logging.Logger) -> dict[str, Any] | None:
    """The state of a checkpoint made with the same settings and data, or None (the folder is then cleared)."""
    state_file = work / "checkpoint" / "state.json"
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = None
        if state is not None and all(state.get(k) == v for k, v in expected.items()):
            return state
        log.warning("stardist: discarding checkpoint %s (other settings or data); training from scratch", work)
    if work.exists():
        shutil.rmtree(work)
    return None


# ----------------------------------------------------------------------------------------------- training


def train_stardist(
    train_dataset: str | Path,
    val_dataset: str | Path,
    settings: StarDistSettings,
    out_dir: str | Path,
    progress: bool = True,
    log: logging.Logger | None = None,
    threads: int | None = None,
) -> Path:
    """Train a StarDist2D nuclei model, tune its thresholds on the validation split, write the model folder.

    Args:
        train_dataset: ``datasets/train.zarr``: input ``bf`` (N, 3, H, W) or ``if`` (N, 5, H, W) in [0, 1] and
            ``labels`` (N, 2, H, W) uint16 (nuclei are channel 0).
        val_dataset: ``datasets/val.zarr`` (same keys): validation loss per epoch and threshold tuning.
        settings: network and training settings (``settings.input`` picks BF or DNA).
        out_dir: the model folder to write (see the module docstring); written atomically.
        progress: show a tqdm bar over epochs.
        log: logger (defaults to this module's).
        threads: CPU threads for TensorFlow (default: the cores this process may use).

    Returns:
        ``out_dir``.
    """
    log = log or _LOG
    out_dir = Path(out_dir)
    _limit_threads(threads, log)
    x, y = load_pairs(train_dataset, settings.input)
    x_val, y_val = load_pairs(val_dataset, settings.input)
    for path, arr in ((train_dataset, x), (val_dataset, x_val)):
        if min(arr.shape[1:3]) < settings.patch_size:
            raise ConfigError(
                f"stardist.patch_size {settings.patch_size} is larger than the fields of {path} "
                f"({arr.shape[1]}x{arr.shape[2]})"
            )
    import keras
    from stardist.models import StarDist2D

    work = out_dir.parent / f".{out_dir.name}.partial"
    expected = {
        "version": _STATE_VERSION,
        "settings": settings.to_dict(),
        "train": _data_signature(Path(train_dataset), x, y),
        "val": _data_signature(Path(val_dataset), x_val, y_val),
    }
    state = _load_checkpoint(work, expected, log)
    keras.utils.set_random_seed(_seed(settings.seed, 0))
    with _quiet_stdout():
        model = StarDist2D(_config(settings, x.shape[-1]), name=out_dir.name, basedir=None)
        model.prepare_for_training()
    if state is None:
        state = {**expected, "epoch": 0, "best_val_loss": math.inf, "history": [], "plateau": None}
        log.info(
            "stardist %s: training from scratch on %d fields (%s), %d validation fields",
            out_dir.name,
            len(x),
            settings.input,
            len(x_val),
        )
    else:
        model.keras_model.load_weights(str(work / "checkpoint" / "weights_last.h5"))
        _restore_optimizer(model, work / "checkpoint" / "optimizer.npz")
        log.info("stardist %s: resuming after epoch %d/%d from %s", out_dir.name, state["epoch"], settings.epochs, work)

    remaining = settings.epochs - int(state["epoch"])
    if remaining > 0:
        with tqdm(
            total=settings.epochs,
            initial=int(state["epoch"]),
            desc="stardist epochs",
            unit="epoch",
            disable=not progress,
        ) as bar:
            model.callbacks.append(_make_epoch_callback(model, work, state, settings, bar, log))
            with _quiet_stdout():
                model.train(
                    x,
                    y,
                    validation_data=(x_val, y_val),
                    augmenter=_Dihedral(_seed(settings.seed, 2, int(state["epoch"]))) if settings.augment else None,
                    seed=_seed(settings.seed, 3),
                    epochs=remaining,
                    steps_per_epoch=settings.steps_per_epoch,
                )

    model.keras_model.load_weights(str(work / "checkpoint" / "weights_best.h5"))
    t0 = time.perf_counter()
    with _quiet_stdout():
        thresholds = model.optimize_thresholds(list(x_val), list(y_val), optimize_kwargs={"verbose": int(progress)})
    thresholds = {"prob": float(thresholds["prob"]), "nms": float(thresholds["nms"])}
    log.info(
        "stardist %s: thresholds prob %.3f, nms %.2f (tuned on %d validation fields in %.1f s)",
        out_dir.name,
        thresholds["prob"],
        thresholds["nms"],
        len(x_val),
        time.perf_counter() - t0,
    )
    history = state["history"]
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(vars(model.config), indent=1))
        shutil.copy2(work / "checkpoint" / "weights_best.h5", tmp / "weights_best.h5")
        shutil.copy2(work / "checkpoint" / "weights_last.h5", tmp / "weights_last.h5")
        (tmp / "thresholds.json").write_text(json.dumps(thresholds))
        summary = {
            **expected,
            "epochs": int(state["epoch"]),
            "best_val_loss": state["best_val_loss"],
            "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else None,
            "thresholds": thresholds,
            "history": history,
        }
        (tmp / "training.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    if history:
        log.info(
            "stardist %s: %d epochs, loss %.4f -> %.4f, %.1f s per epoch; model in %s",
            out_dir.name,
            len(history),
            history[0]["loss"],
            history[-1]["loss"],
            summary["seconds_per_epoch"],
            out_dir,
        )
    return out_dir


# ----------------------------------------------------------------------------------------------- prediction


def _load_model(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The trained StarDist2D of ``model_dir`` (best weights, tuned thresholds) and its training.json."""
    from stardist.models import StarDist2D

    if not model_dir.is_dir():
        raise CellResDMError(f"StarDist model {model_dir} does not exist (train it with train_stardist)")
    for name in _MODEL_FILES:
        if not (model_dir / name).is_file():
            raise CellResDMError(f"StarDist model {model_dir} is incomplete: {name} is missing")
    try:
        training = json.loads((model_dir / "training.json").read_text())
    except ValueError as exc:
        raise CellResDMError(f"{model_dir / 'training.json'}: not valid JSON ({exc})") from exc
    with _quiet_stdout():
        model = StarDist2D(None, name=model_dir.name, basedir=str(model_dir.parent))
    return model, training


def _tensorflow_device() -> str:
    """Where TensorFlow ran the predictions (for the throughput table): its first GPU, else the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return f"{gpus[0].name} (TensorFlow)" if gpus else "cpu (TensorFlow)"


def predict_stardist(
    model_dir: str | Path,
    test_dataset: str | Path,
    out: str | Path,
    source: str,
    settings_or_input: StarDistSettings | str,
    progress: bool = True,
    log: logging.Logger | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Predict nuclei instances of every test field and write the instances store ``out`` (module docstring).

    Args:
        model_dir: a folder written by :func:`train_stardist`.
        test_dataset: ``datasets/test.zarr`` with the model's input array (``bf`` or ``if``) and
            its field table.
        out: the instances store to write, e.g. ``segmentation/stardist_bf_instances.zarr`` (atomically).
        source: name recorded in the store (``stardist_bf`` / ``stardist_if``).
        settings_or_input: the baseline's settings, or just its input name (``"bf"`` / ``"dna"``; the model's
            training settings are then recorded and the default tile size is used).
        progress: show a tqdm bar over fields.
        log: logger (defaults to this module's).
        threads: CPU threads for TensorFlow (default: the cores this process may use).

    Returns:
        Summary: source, n_fields, seconds (total), seconds_per_field (mean over fields, after one untimed
        warm-up prediction), n_objects (total), thresholds, out.
    """
    log = log or _LOG
    model_dir, test_dataset, out = Path(model_dir), Path(test_dataset), Path(out)
    if isinstance(settings_or_input, StarDistSettings):
        settings = settings_or_input
    elif isinstance(settings_or_input, str):
        if settings_or_input not in _INPUTS:
            raise ConfigError(f"stardist input must be one of {sorted(_INPUTS)}, got {settings_or_input!r}")
        settings = None
    else:
        raise ConfigError(f"settings_or_input must be StarDistSettings or an input name, got {settings_or_input!r}")
    input_name = settings.input if settings is not None else settings_or_input
    _limit_threads(threads, log)
    split = _open_split(test_dataset, input_name, need_labels=False)
    array = split[_INPUTS[input_name][0]]
    n, _, h, w = array.shape
    if n == 0:
        raise CellResDMError(f"dataset {test_dataset} holds no fields (empty split)")

    model, training = _load_model(model_dir)
    trained_input = training.get("settings", {}).get("input")
    if trained_input != input_name:
        raise ConfigError(f"StarDist model {model_dir} was trained on input {trained_input!r}, not {input_name!r}")
    if settings is None:
        # the model's training settings, as a config section of the baseline trained on this input
        baseline = {v: k for k, v in BASELINES.items()}[input_name]
        settings = StarDistSettings.from_config(training["settings"], baseline)
    thresholds = {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)}
    tiles = (math.ceil(h / settings.tile_size), math.ceil(w / settings.tile_size), 1)

    def predict(i: int) -> np.ndarray:
        labels, _ = model.predict_instances(
            _field_input(array, i, input_name), axes="YXC", n_tiles=tiles, show_tile_progress=False
        )
        return labels

    with create_instances(out, ["nuclei"], n, (h, w)) as writer:
        predict(0)  # warm-up: TensorFlow builds its graph on the first call
        seconds = 0.0
        n_objects = 0
        for i in tqdm(range(n), desc=f"{source} predict", unit="field", disable=not progress):
            t0 = time.perf_counter()
            labels = predict(i)
            seconds += time.perf_counter() - t0
            n_objects += int(labels.max())
            writer.write_field(i, nuclei=labels.astype(np.int32))
        writer.finish(
            split,
            {
                "source": source,
                "objects": ["nuclei"],
                "seconds_per_field": seconds / n,
                "device": _tensorflow_device(),
                "settings": settings.to_dict(),
                "thresholds": thresholds,
            },
        )
    log.info(
        "%s: %d fields of %dx%d, %d nuclei, %.3f s per field; instances in %s",
        source,
        n,
        h,
        w,
        n_objects,
        seconds / n,
        out,
    )
    return {
        "source": source,
        "n_fields": int(n),
        "seconds": seconds,
        "seconds_per_field": seconds / n,
        "n_objects": n_objects,
        "thresholds": thresholds,
        "out": str(out),
    }
