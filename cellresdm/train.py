"""The shared trainer every method uses: AdamW, warmup + cosine LR, EMA, checkpoints with exact resume, DDP.

Determinism: every source of randomness is a pure function of ``settings.seed`` and a counter, so no RNG
state is saved and a resumed run is bit-for-bit the uninterrupted one on CPU:

* data order: epoch ``e`` visits the dataset in the permutation drawn from a generator seeded by
  ``(seed, e)`` (:class:`EpochBatchSampler`), cut into ``len(dataset) // (batch_size * world_size)`` full
  batches (the rest is dropped); ``dataset.set_epoch(e)`` is called first where the dataset has it. A
  resume in the middle of an epoch continues with exactly that epoch's remaining batches.
* the step: ``loss_fn`` gets a CPU ``torch.Generator`` seeded by ``(seed, step, rank)``
  (:func:`step_generator`) for its timesteps, noise, condition dropout...; the global torch RNG is also
  reseeded from ``(seed, step, rank)`` before each step, so layers that draw from it (``nn.Dropout``) are
  reproducible too.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1) the trainer joins the process group (NCCL on CUDA,
Gloo on CPU), wraps the model in DistributedDataParallel and gives each rank its slice of every global
batch. ``batch_size`` is the per-rank batch; the global batch is ``batch_size * world_size``. Only rank 0
writes files, logs and draws a progress bar; the EMA and the checkpoints hold the unwrapped module.

Files in ``out_dir`` (each written to a temporary sibling and renamed into place):

* ``checkpoint.pt``: model, EMA, optimizer, schedule, step, epoch and batch in epoch, settings; written
  every ``checkpoint_every`` steps and at the end; a rerun resumes from it.
* ``train_log.csv``: one row per step (step, epoch, loss, lr, grad_norm, seconds, samples_per_s); written
  with each checkpoint, and kept across resumes up to the checkpointed step.
* ``model.pt``: ``{"config", "settings", "step", "model", "ema"}`` at the end; read by
  :func:`load_model_weights`. Its presence with ``step == settings.steps`` marks a finished run.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from cellresdm.config import section as validated_section
from cellresdm.config import settings_values
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.io import atomic_path, load_torch_dict

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_COLUMNS",
    "LOG_NAME",
    "MODEL_NAME",
    "EpochBatchSampler",
    "LossFn",
    "RunContext",
    "StepResult",
    "TrainSettings",
    "TrainState",
    "Trainer",
    "derive_seed",
    "load_model_weights",
    "lr_at",
    "step_generator",
]

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
LOG_NAME = "train_log.csv"
LOG_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "seconds", "samples_per_s")

#: Settings that change which batches and which randomness each step sees: a checkpoint that differs in any
#: of them cannot be resumed. The others (lr, steps, ...) may change between runs; a resume warns and uses
#: the new values.
_RESUME_KEYS = ("batch_size", "seed")

# stream tags of derive_seed, so the data order, the step generator and the global RNG never share a seed
_DATA, _STEP, _GLOBAL = 0, 1, 2

#: ``loss_fn(model, batch, generator) -> scalar loss``: ``model`` is the (possibly DDP-wrapped) network,
#: ``batch`` the collated dataset items on the training device, ``generator`` a CPU generator that supplies
#: all randomness of the step.
LossFn = Callable[[nn.Module, dict[str, Tensor], torch.Generator], Tensor]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings: the validated config section ``train``, whose schema holds every key's default,
    limits and description; build with :meth:`from_config`.

    Attributes:
        steps: optimizer steps of the run.
        batch_size: batch per process (the global batch is ``batch_size * world_size`` under torchrun).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW (decoupled) weight decay.
        betas: AdamW betas.
        warmup_steps: linear warmup from ``lr / warmup_steps`` to ``lr`` over the first steps.
        min_lr_ratio: the cosine decays from ``lr`` to ``lr * min_lr_ratio`` at ``steps`` (see :func:`lr_at`).
        ema_decay: per-step decay of the weight EMA used for sampling, in [0, 1).
        grad_clip: max global gradient norm; 0 turns clipping off (the norm is still logged).
        checkpoint_every: steps between checkpoints (one is also written at the end).
        log_every: steps between log lines.
        seed: seed of the data order and of every step's randomness.
        crops_per_field: random crops per field and epoch of a :class:`cellresdm.dataset.CellPaintingDataset`
            (read where the dataset is built; None derives it from field and crop size).
        num_workers: DataLoader worker processes.
        amp: ``"auto"`` (bf16 autocast on CUDA, off on CPU), ``"bf16"`` (always) or ``"off"``.
        threads: CPU threads torch uses when training on the CPU (float reductions, so the weights, depend on
            the count: the trainer sets it, whatever the caller's default).
    """

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    min_lr_ratio: float
    ema_decay: float
    grad_clip: float
    checkpoint_every: int
    log_every: int
    seed: int
    crops_per_field: int | None
    num_workers: int
    amp: str
    threads: int

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> TrainSettings:
        """From a validated config section ``train`` (every key present, as validation fills the schema's
        defaults: e.g. ``cellresdm.config.section("train", overrides)``).

        Raises:
            ConfigError: a field is missing from ``section`` (it was not validated), naming the key.
        """
        return cls(**settings_values(cls, section, "train"))  # betas a tuple, as AdamW and saved settings have it

    def validate(self) -> None:
        """Check the settings against the schema of section ``train`` (where every per-key limit lives) and
        that every number is finite (which a JSON schema cannot say).

        Raises:
            ConfigError: naming the first invalid key, as ``train.<key>``.
        """
        values = {**asdict(self), "betas": list(self.betas)}  # JSON arrays are lists
        validated_section("train", values)
        for key, value in values.items():
            numbers = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ConfigError(f"config key 'train.{key}': must be a finite number, got {value!r}")


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a fixed function of the non-negative integers ``keys``."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator handed to ``loss_fn`` at 0-based ``step`` on ``rank``."""
    return torch.Generator().manual_seed(derive_seed(seed, _STEP, step, rank))


def lr_at(step: int, settings: TrainSettings) -> float:
    """Learning rate of the optimizer step with 0-based index ``step`` (0 <= step <= settings.steps).

    Linear warmup ``lr * (step + 1) / warmup_steps`` while ``step < warmup_steps`` (reaching ``lr`` at step
    ``warmup_steps - 1``), then a half cosine from ``lr`` at ``warmup_steps`` to ``lr * min_lr_ratio`` at
    ``steps``: ``lr * (r + (1 - r) * (1 + cos(pi * p)) / 2)`` with ``p = (step - warmup) / (steps - warmup)``.
    """
    s = settings
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
    r = s.min_lr_ratio
    return s.lr * (r + (1 - r) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class EpochBatchSampler(Sampler[list[int]]):
    """The batches of one epoch for one rank: a seeded permutation cut into full global batches.

    Global batch ``b`` is ``perm[b * G:(b + 1) * G]`` with ``G = batch_size * world_size``; rank ``r`` takes
    its ``r``-th slice of ``batch_size``. Iteration starts at batch ``start_batch`` (a resume mid-epoch).
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        global_batch = batch_size * world_size
        if dataset_size < global_batch:
            raise CellResDMError(
                f"the dataset has {dataset_size} items, fewer than one batch of {global_batch} "
                f"(batch_size {batch_size} x {world_size} processes)"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.batches_per_epoch = dataset_size // global_batch
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside the epoch's {self.batches_per_epoch} batches")
        self.start_batch = start_batch

    def permutation(self) -> Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, _DATA, self.epoch))
        return torch.randperm(self.dataset_size, generator=gen)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation().tolist()
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            first = b * global_batch + self.rank * self.batch_size
            yield perm[first : first + self.batch_size]


def _load(path: Path) -> dict[str, Any]:
    obj = load_torch_dict(path, "CellResDM checkpoint")
    if "model" not in obj:
        raise CellResDMError(f"{path}: not a CellResDM checkpoint (no model weights)")
    return obj


def load_model_weights(path: str | os.PathLike, model: nn.Module, ema: bool = True) -> dict[str, Any]:
    """Load the EMA weights (``ema=True``, for sampling) or the raw weights of ``model.pt`` (or a
    ``checkpoint.pt``) into ``model``; return the checkpoint's config."""
    path = Path(path)
    if not path.is_file():
        raise CellResDMError(f"{path}: model file is missing (train the method first)")
    checkpoint = _load(path)
    key = "ema" if ema else "model"
    if key not in checkpoint:
        raise CellResDMError(f"{path}: checkpoint has no {key!r} weights")
    try:
        model.load_state_dict(checkpoint[key])
    except RuntimeError as exc:
        raise CellResDMError(f"{path}: {key} weights do not fit the model: {exc}") from exc
    return checkpoint.get("config") or {}


def ema_decay_at(step: int, decay: float) -> float:
    """Decay of the weight EMA at optimizer step ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``.

    The warmup lets the average forget the random initial weights within the first steps; with a constant 0.995
    they would still weigh 0.995**500 = 8% in the EMA of a 500-step run. ``decay`` is reached after
    ``(10 decay - 1) / (1 - decay)`` steps (1,790 for 0.995); 0 samples the raw weights throughout."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def _update_ema(ema: list[Tensor], params: list[Tensor], ema_buffers: list[Tensor], buffers: list[Tensor], decay):
    torch._foreach_lerp_(ema, params, 1.0 - decay)  # ema += (1 - decay) * (param - ema)
    for e, b in zip(ema_buffers, buffers, strict=True):
        e.copy_(b)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _shape_mismatches(saved: dict[str, Tensor], current: dict[str, Tensor]) -> list[str]:
    out = [f"{k} missing from checkpoint" for k in current if k not in saved]
    out += [f"{k} not in model" for k in saved if k not in current]
    out += [
        f"{k}: {tuple(saved[k].shape)} vs {tuple(current[k].shape)}"
        for k in current
        if k in saved and tuple(saved[k].shape) != tuple(current[k].shape)
    ]
    return out


@dataclass(frozen=True)
class RunContext:
    """Where a run happens: its device and process group, and how the dataset cuts into batches.

    Attributes:
        device: the training device.
        world_size: processes of the run (1 without torchrun).
        rank: this process's rank (0 without torchrun).
        distributed: a process group joins the ranks (DDP, all-reduced losses, barriers around checkpoints).
        log: this rank's logger (ranks other than 0 keep only their warnings).
        dataset_size: items in the dataset.
        batches_per_epoch: full global batches per epoch (the rest of the dataset is dropped).
        crops_per_field: items per field of a dataset that draws several crops of each field
            (``dataset.crops_per_field``; None for other datasets).
    """

    device: torch.device
    world_size: int
    rank: int
    distributed: bool
    log: logging.Logger
    dataset_size: int
    batches_per_epoch: int
    crops_per_field: int | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files, logs and draws the progress bar."""
        return self.rank == 0


@dataclass
class TrainState:
    """What the steps change: the weights, their EMA, the optimizer, the step count and the log rows.

    Attributes:
        model: the unwrapped network on the training device (what checkpoints hold).
        net: what ``loss_fn`` is called with: ``model``, or its DistributedDataParallel wrapper.
        ema: the EMA copy of ``model`` (no gradients, eval mode).
        optimizer: AdamW over ``model``'s parameters.
        step: optimizer steps done.
        rows: ``train_log.csv`` rows of steps 1..``step`` (rank 0; empty on the other ranks).
    """

    model: nn.Module
    net: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # fixed lists, so every step updates the EMA and clips the gradients in the same order
        self.params = list(self.model.parameters())
        self.ema_params = list(self.ema.parameters())
        self.buffers = list(self.model.buffers())
        self.ema_buffers = list(self.ema.buffers())
        self.trainable = [p for p in self.params if p.requires_grad]


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step reports: its learning rate, the (rank-averaged) loss and the gradient norm
    before clipping."""

    lr: float
    loss: float
    grad_norm: float


class Trainer:
    """Train ``model`` by minimising ``loss_fn`` over ``dataset``; see the module docstring.

    The work is split as in improved-diffusion's ``TrainLoop``: :meth:`train` joins the process group and calls
    :meth:`run_loop`, which runs :meth:`run_step` (:meth:`forward_backward`, then :meth:`optimize`) over each
    epoch's batches, :meth:`log_step` after every step and :meth:`save` every ``checkpoint_every`` steps.

    Args:
        model: the network (left on the training device; its weights end as the raw trained weights).
        loss_fn: ``loss_fn(model, batch, generator) -> scalar tensor``.
        dataset: map-style dataset of dicts of tensors (``set_epoch(epoch)`` is called where present).
        settings: optimisation settings (validated here).
        out_dir: folder of ``checkpoint.pt``, ``train_log.csv`` and ``model.pt``.
        config: stored in ``model.pt`` (what is needed to rebuild the method).
        log: logger (default: this module's).
        progress: draw a tqdm bar (rank 0 only).
        device: training device; default ``cuda`` (``cuda:LOCAL_RANK`` under torchrun) if available, else cpu.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        dataset: Dataset,
        settings: TrainSettings,
        out_dir: str | os.PathLike,
        config: dict | None = None,
        log: logging.Logger | None = None,
        progress: bool = True,
        device: str | torch.device | None = None,
    ):
        settings.validate()
        self.model = model
        self.loss_fn = loss_fn
        self.dataset = dataset
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.config = dict(config) if config else {}
        self.log = log or logging.getLogger(__name__)
        self.progress = progress
        self.requested_device = device
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self.model_path = self.out_dir / MODEL_NAME
        self.log_path = self.out_dir / LOG_NAME

    # -- setup -----------------------------------------------------------------------------------------------

    def _resolve_device(self, world_size: int) -> torch.device:
        if self.requested_device is not None:
            return torch.device(self.requested_device)
        if torch.cuda.is_available():
            if world_size > 1:
                local_rank = int(os.environ.get("LOCAL_RANK", "0"))
                return torch.device("cuda", local_rank)
            return torch.device("cuda")
        return torch.device("cpu")

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        amp = self.settings.amp
        if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _context(self, device: torch.device, world_size: int) -> RunContext:
        """The run's :class:`RunContext`; raises if the process group or the dataset does not fit."""
        distributed = world_size > 1 and dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        if distributed and dist.get_world_size() != world_size:
            raise CellResDMError(f"WORLD_SIZE={world_size} but the process group has {dist.get_world_size()}")
        log = self.log
        if rank != 0:  # only rank 0 logs; the others keep their warnings
            log = logging.getLogger(f"{__name__}.rank{rank}")
            log.setLevel(logging.WARNING)
        dataset_size = len(self.dataset)  # type: ignore[arg-type]
        crops = getattr(self.dataset, "crops_per_field", None)
        global_batch = self.settings.batch_size * world_size
        if dataset_size < global_batch:
            hint = f"; {crops} crops per field: raise train.crops_per_field" if crops is not None else ""
            raise CellResDMError(
                f"the dataset has {dataset_size} items, fewer than one batch of {global_batch} "
                f"(batch_size {self.settings.batch_size} x {world_size} processes{hint})"
            )
        return RunContext(device, world_size, rank, distributed, log, dataset_size, dataset_size // global_batch, crops)

    def _check_compatible(self, path: Path, saved: dict[str, Any], run: RunContext) -> None:
        """Raise if the run saved at ``path`` cannot be continued with the current settings, data and model."""
        problems = []
        old = saved.get("settings") or {}
        new = asdict(self.settings)
        for key in _RESUME_KEYS:
            if old.get(key) != new[key]:
                problems.append(f"{key} {old.get(key)!r} (now {new[key]!r})")
        # the same item count can come from other fields x crops, which changes every epoch's items
        run_keys = (("world_size", run.world_size), ("dataset_size", run.dataset_size))
        for key, now in (*run_keys, ("crops_per_field", run.crops_per_field)):
            if key in saved and saved[key] != now:
                problems.append(f"{key} {saved[key]!r} (now {now!r})")
        mismatches = _shape_mismatches(saved["model"], self.model.state_dict())
        if mismatches:
            more = f" and {len(mismatches) - 3} more" if len(mismatches) > 3 else ""
            problems.append(f"model weights differ: {'; '.join(mismatches[:3])}{more}")
        if problems:
            raise CellResDMError(
                f"{path} comes from an incompatible run: {', '.join(problems)}. Delete {path.parent} "
                "(or its checkpoint.pt and model.pt) to start over, or train into another out_dir"
            )

    def _is_finished(self, run: RunContext) -> bool:
        """Whether ``model.pt`` holds this run at ``settings.steps`` (it must come from a compatible run)."""
        if not self.model_path.is_file():
            return False
        finished = _load(self.model_path)
        self._check_compatible(self.model_path, finished, run)
        return finished.get("step") == self.settings.steps

    def _initial_state(self, run: RunContext) -> TrainState:
        """Model on the device, AdamW and EMA, resumed from ``checkpoint.pt`` where present, DDP-wrapped when
        distributed."""
        s = self.settings
        torch.manual_seed(s.seed)
        model = self.model.to(run.device)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr_at(0, s), betas=tuple(s.betas), weight_decay=s.weight_decay
        )
        ema = _copy_for_ema(model)
        step, rows = 0, []
        if self.checkpoint_path.is_file():
            step, rows = self._resume(run, model, ema, optimizer)
        for group in optimizer.param_groups:  # the current settings rule, also after a resume
            group["betas"] = tuple(s.betas)
            group["weight_decay"] = s.weight_decay
        net: nn.Module = model
        if run.distributed:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[run.device.index] if run.device.type == "cuda" else None
            )
        return TrainState(model, net, ema, optimizer, step, rows)

    def _resume(
        self, run: RunContext, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[int, list[dict[str, Any]]]:
        """Load ``checkpoint.pt`` into ``model``, ``ema`` and ``optimizer``; return its step and the log rows up
        to it (rank 0)."""
        s = self.settings
        checkpoint = _load(self.checkpoint_path)
        self._check_compatible(self.checkpoint_path, checkpoint, run)
        step = int(checkpoint["step"])
        if step > s.steps:
            raise CellResDMError(
                f"{self.checkpoint_path} is at step {step}, beyond train.steps={s.steps}: raise steps, "
                f"or delete {self.out_dir} to start over"
            )
        model.load_state_dict(checkpoint["model"])
        ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        changed = [k for k, v in asdict(s).items() if k not in _RESUME_KEYS and checkpoint["settings"].get(k) != v]
        if changed and run.main:
            run.log.warning("resuming with changed settings (the new values apply): %s", ", ".join(changed))
        run.log.info("resuming %s from step %d of %d", self.checkpoint_path, step, s.steps)
        return step, self._read_log_rows(step) if run.main else []

    def _epoch_loader(self, run: RunContext, epoch: int, start_batch: int) -> DataLoader:
        """This rank's batches of ``epoch`` from global batch ``start_batch`` on (:class:`EpochBatchSampler`)."""
        s = self.settings
        sampler = EpochBatchSampler(
            run.dataset_size, s.batch_size, s.seed, epoch, start_batch, run.rank, run.world_size
        )
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        return DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=s.num_workers, pin_memory=run.device.type == "cuda"
        )

    # -- files (rank 0) --------------------------------------------------------------------------------------

    def _read_log_rows(self, upto_step: int) -> list[dict[str, Any]]:
        if not self.log_path.is_file():
            if upto_step > 0:
                self.log.warning("%s is missing; the log restarts at step %d", self.log_path, upto_step + 1)
            return []
        table = pd.read_csv(self.log_path)  # pandas >= 3 parses floats round-trip exactly
        table = table[table["step"] <= upto_step]
        return table.to_dict("records")

    def _write_log(self, rows: list[dict[str, Any]]) -> None:
        with atomic_path(self.log_path) as tmp:
            pd.DataFrame(rows, columns=list(LOG_COLUMNS)).to_csv(tmp, index=False)

    def _save(self, obj: dict[str, Any], path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)

    def save(self, run: RunContext, state: TrainState, final: bool) -> None:
        """Write ``train_log.csv`` and ``checkpoint.pt`` (and ``model.pt`` when ``final``) from rank 0, between
        barriers so no rank runs ahead of a checkpoint."""
        if run.distributed:
            dist.barrier()
        if run.main:
            s = self.settings
            epoch, batch_in_epoch = divmod(state.step, run.batches_per_epoch)
            checkpoint = {
                "config": self.config,
                "settings": asdict(s),
                "step": state.step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "world_size": run.world_size,
                "dataset_size": run.dataset_size,
                "crops_per_field": run.crops_per_field,
                "model": state.model.state_dict(),
                "ema": state.ema.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "scheduler": {"kind": "warmup_cosine", "step": state.step, "lr": lr_at(state.step, s)},
            }
            # the log first: a crash after it leaves rows past the old checkpoint, which a resume drops
            self._write_log(state.rows)
            self._save(checkpoint, self.checkpoint_path)
            if final:
                keys = ("config", "settings", "step", "world_size", "dataset_size", "crops_per_field", "model", "ema")
                self._save({k: checkpoint[k] for k in keys}, self.model_path)
        if run.distributed:
            dist.barrier()

    # -- training --------------------------------------------------------------------------------------------

    def train(self, stop_after: int | None = None) -> Path:
        """Train to ``settings.steps`` (resuming from ``out_dir/checkpoint.pt`` if present) and return
        ``out_dir/model.pt``. A finished run (``model.pt`` at ``settings.steps``) returns at once.

        ``stop_after`` ends the run early after that many steps (counting from step 0, not from the
        resume) without writing anything beyond the regular checkpoints, as an interruption would; it then
        returns the checkpoint path.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        device = self._resolve_device(world_size)
        if device.type == "cpu":
            torch.set_num_threads(self.settings.threads)
        owns_group = False
        if world_size > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            owns_group = True
        try:
            return self.run_loop(self._context(device, world_size), stop_after)
        finally:
            if owns_group:
                dist.destroy_process_group()

    def run_loop(self, run: RunContext, stop_after: int | None = None) -> Path:
        """Steps from the resumed step to ``settings.steps`` (or ``stop_after``), epoch by epoch, with a log row
        per step and the checkpoints; returns ``model.pt`` (the checkpoint when stopped early)."""
        s = self.settings
        if self._is_finished(run):
            run.log.info("%s is complete (%d steps); nothing to train", self.model_path, s.steps)
            return self.model_path
        state = self._initial_state(run)
        start_step = state.step
        if run.main:
            run.log.info(
                "training %d steps from step %d on %s: %d items, batch %d x %d processes, %d batches per epoch",
                s.steps,
                start_step,
                run.device,
                run.dataset_size,
                s.batch_size,
                run.world_size,
                run.batches_per_epoch,
            )
        bar = tqdm(
            total=s.steps,
            initial=start_step,
            desc="train",
            disable=not (self.progress and run.main),
            dynamic_ncols=True,
        )

        def more(step: int) -> bool:
            return step < s.steps and (stop_after is None or step < stop_after)

        try:
            state.model.train()
            while more(state.step):
                epoch, start_batch = divmod(state.step, run.batches_per_epoch)
                loader = self._epoch_loader(run, epoch, start_batch)
                t0 = time.perf_counter()  # a step's seconds include waiting for its batch
                for batch in loader:
                    result = self.run_step(run, state, batch)
                    self.log_step(run, state, epoch, result, time.perf_counter() - t0, bar)
                    if state.step % s.checkpoint_every == 0 or state.step == s.steps:
                        self.save(run, state, final=state.step == s.steps)
                    t0 = time.perf_counter()
                    if not more(state.step):
                        break
        finally:
            bar.close()
        if state.step < s.steps:
            run.log.info("stopped after step %d of %d (stop_after)", state.step, s.steps)
            return self.checkpoint_path
        if start_step == s.steps:  # resumed from the final checkpoint of a run whose model.pt was lost
            self.save(run, state, final=True)
        run.log.info("training done: %s", self.model_path)
        return self.model_path

    def run_step(self, run: RunContext, state: TrainState, batch: Any) -> StepResult:
        """One optimizer step on ``batch`` (as the DataLoader gives it): set the learning rate, seed the step's
        randomness, :meth:`forward_backward`, :meth:`optimize`; advances ``state.step``."""
        s = self.settings
        lr = lr_at(state.step, s)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        generator = step_generator(s.seed, state.step, run.rank)
        torch.manual_seed(derive_seed(s.seed, _GLOBAL, state.step, run.rank))
        loss = self.forward_backward(run, state, _to_device(batch, run.device), generator, lr)
        grad_norm = self.optimize(state, loss)
        state.step += 1
        return StepResult(lr=lr, loss=loss, grad_norm=grad_norm)

    def forward_backward(
        self, run: RunContext, state: TrainState, batch: dict[str, Tensor], generator: torch.Generator, lr: float
    ) -> float:
        """Zero the gradients, compute ``loss_fn`` (under autocast) and backpropagate it; return the loss averaged
        over the ranks.

        Raises:
            CellResDMError: the loss is not a scalar, depends on no trainable weight, or is not finite (training
                stops; the last checkpoint is kept).
        """
        s, step = self.settings, state.step
        state.optimizer.zero_grad(set_to_none=True)
        with self._autocast(run.device):
            loss = self.loss_fn(state.net, batch, generator)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise CellResDMError(f"loss_fn must return a scalar tensor, got {shape} at step {step + 1}")
        if not loss.requires_grad:
            raise CellResDMError(f"the loss at step {step + 1} does not depend on any trainable weight")
        value = loss.detach().float()
        if run.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= run.world_size
        loss_value = value.item()
        if not math.isfinite(loss_value):
            raise CellResDMError(
                f"loss is {loss_value} at step {step + 1} of {s.steps} (lr {lr:.3g}); training stopped, "
                f"the last checkpoint {self.checkpoint_path} is kept"
            )
        loss.backward()
        return loss_value

    def optimize(self, state: TrainState, loss: float) -> float:
        """Clip the gradients (``grad_clip`` > 0), step AdamW and update the EMA; return the gradient norm before
        clipping.

        Raises:
            CellResDMError: the gradient norm is not finite (training stops; the last checkpoint is kept).
        """
        s = self.settings
        if s.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(state.trainable, s.grad_clip))
        else:
            grads = [p.grad for p in state.trainable if p.grad is not None]
            grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        if not math.isfinite(grad_norm):
            raise CellResDMError(
                f"gradient norm is {grad_norm} at step {state.step + 1} of {s.steps} (loss {loss:.4g}); "
                f"training stopped, the last checkpoint {self.checkpoint_path} is kept"
            )
        state.optimizer.step()
        decay = ema_decay_at(state.step, s.ema_decay)
        _update_ema(state.ema_params, state.params, state.ema_buffers, state.buffers, decay)
        return grad_norm

    def log_step(
        self, run: RunContext, state: TrainState, epoch: int, result: StepResult, seconds: float, bar: tqdm
    ) -> None:
        """Rank 0: the ``train_log.csv`` row of the step just done, the progress bar, and a log line every
        ``log_every`` steps and at the last."""
        if not run.main:
            return
        s = self.settings
        global_batch = s.batch_size * run.world_size
        state.rows.append(
            {
                "step": state.step,
                "epoch": epoch,
                "loss": result.loss,
                "lr": result.lr,
                "grad_norm": result.grad_norm,
                "seconds": seconds,
                "samples_per_s": global_batch / seconds if seconds > 0 else float("nan"),
            }
        )
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}", refresh=False)
        if state.step % s.log_every == 0 or state.step == s.steps:
            run.log.info(
                "step %d/%d epoch %d: loss %.5f lr %.3g grad_norm %.3g (%.1f samples/s)",
                state.step,
                s.steps,
                epoch,
                result.loss,
                result.lr,
                result.grad_norm,
                state.rows[-1]["samples_per_s"],
            )


def _copy_for_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    ema.eval()
    return ema
