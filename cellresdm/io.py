"""Atomic file output, validated image input and checked torch file loading.

Every output of the pipeline is written to a temporary sibling and renamed into place, so an interrupted
job never leaves a half-written file that a rerun would mistake for a finished one. The temporary of an output
has a fixed name (``.NAME.part{suffix}``), so the next write replaces what a killed writer left, and it gets the
mode a plain write would give under the umask.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from cellresdm.errors import CellResDMError, ImageError

#: Where Linux reports a process's umask (``Umask:`` line, kernels from 4.7).
PROC_STATUS = "/proc/self/status"


def current_umask() -> int:
    """The process's umask, read on every call so that a change of it is followed.

    Linux reports it (``Umask:`` of :data:`PROC_STATUS`), so it is read without changing it. Elsewhere it is read
    the only way POSIX offers, by setting and restoring it; a file another thread creates in between gets 0022.
    """
    with contextlib.suppress(OSError, ValueError), open(PROC_STATUS) as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(directory: bool = False) -> int:
    """The mode a plain ``open(..., "w")`` (or ``mkdir`` for a ``directory``) gives under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def _part(target: Path, suffix: str) -> Path:
    """The temporary sibling an output is written to (``.{name}.part{suffix}``). One job writes an output at a
    time, so the name is fixed: a part left by a writer that was killed (SIGKILL, node failure) is replaced by
    the next write of the same output, without listing the folder."""
    return target.parent / f".{target.name}.part{suffix}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error remove it.

    ``suffix`` keeps the extension for writers that infer the format from it (defaults to the target's).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _part(target, suffix if suffix is not None else target.suffix)
    _remove(tmp)
    tmp.touch()
    try:
        tmp.chmod(plain_mode())
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` (an older one is removed),
    on error it is deleted. Readers never see a half-written directory output (e.g. a zarr store)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _part(target, ".tmp"), _part(target, ".old")
    for stale in (tmp, old):
        _remove(stale)
    tmp.mkdir()
    try:
        tmp.chmod(plain_mode(directory=True))
        yield tmp
        if target.exists() or target.is_symlink():
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_torch_dict(path: str | os.PathLike, what: str) -> dict:
    """The dict saved in the torch file ``path`` (tensors and plain values only: ``weights_only``).

    Raises:
        CellResDMError: "{path}: not a readable {what}" when torch cannot read it, "{path}: not a {what}" when it
        holds something other than a dict.
    """
    import torch  # only the model stages need torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises several types for a corrupt or foreign file
        raise CellResDMError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CellResDMError(f"{path}: not a {what} (a {type(obj).__name__}, expected a dict)")
    return obj


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(df, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame to parquet atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_tiff(path: str | os.PathLike, array: np.ndarray, compression: str | None = "lzw") -> None:
    """Write ``array`` as a TIFF (LZW by default, as in the gallery) atomically."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, compression=compression)


def read_tiff(
    path: str | os.PathLike,
    shape: tuple[int, ...] | None = None,
    dtype: np.dtype | type | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Read a TIFF fully and check it; raise :class:`ImageError` naming the file on any problem.

    Args:
        path: the TIFF file.
        shape: expected shape, if known.
        dtype: expected dtype, if known.
        ndim: expected number of dimensions, if the shape is not known.

    Returns:
        The image array (all strips decoded, so a truncated file fails here, not later).
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: image file is missing")
    try:
        array = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for corrupt or truncated files
        raise ImageError(f"{path}: unreadable TIFF ({type(exc).__name__}: {exc})") from exc
    if array.size == 0:  # tifffile only warns on a file with no valid page and returns an empty array
        raise ImageError(f"{path}: unreadable TIFF (no image data)")
    if ndim is not None and array.ndim != ndim:
        raise ImageError(f"{path}: expected a {ndim}-D image, got shape {array.shape}")
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ImageError(f"{path}: expected shape {tuple(shape)}, got {array.shape}")
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise ImageError(f"{path}: expected dtype {np.dtype(dtype)}, got {array.dtype}")
    return array
