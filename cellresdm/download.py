"""The resumable, parallel download of one plate from the Cell Painting Gallery (:mod:`cellresdm.gallery` reads
its load_data and opens the gallery).

The download (docs/design.md section 5, stage ``download``) writes the image files into one folder and the
plate's local load_data table (parquet) to an explicit path:

- one listing of the plate's ``Images`` prefix gives the size of every object (no HEAD per file);
- files already present locally with the listed size are skipped, so a rerun resumes an interrupted run;
- every file is downloaded to a hidden ``.part`` temporary and renamed only once its size matches the listing;
- transient errors (5xx, throttling, resets, timeouts, truncated bodies) are retried with exponential backoff
  and jitter; a key named in load_data.csv but absent from the gallery gets ``path_{ch} = None`` (the filter
  stage marks the field ``missing``); anything else ends in a :class:`GalleryError` naming the key;
- with an ``illum_dir``, the plate's 8 illumination functions (``illum/{plate}/{plate}_Illum{channel}.npy``) are
  fetched the same way and checked; a plate whose gallery folder lacks any of them is named in a warning and
  runs uncorrected (the table's ``illum_{channel}`` columns hold the local paths, or None).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
from tqdm import tqdm

from cellresdm import layout
from cellresdm.errors import CellResDMError, GalleryError
from cellresdm.gallery import (
    SizeMismatch,
    gallery_url,
    is_key,
    key_column,
    normalise_well,
    open_gallery,
    read_load_data_from,
    with_retries,
)
from cellresdm.io import atomic_path, write_parquet
from cellresdm.layout import ALL_CHANNELS, GalleryLayout, illum_column, path_column

__all__ = ["DownloadStats", "download_plate"]

_log = logging.getLogger(__name__)

#: Suffix of the temporaries a download writes before renaming (``.<file name>.part.part``, cellresdm.io).
PART_SUFFIX = ".part"


@dataclass
class DownloadStats:
    """What one :func:`download_plate` call did (also in the returned table's ``attrs['download']``)."""

    fetched: int = 0
    skipped: int = 0
    missing: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    missing_keys: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_fetched / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "fetched": self.fetched,
            "skipped": self.skipped,
            "missing": self.missing,
            "bytes_fetched": self.bytes_fetched,
            "seconds": self.seconds,
            "mb_per_s": self.mb_per_s,
            "missing_keys": list(self.missing_keys),
        }


def _list_sizes(
    fs: fsspec.AbstractFileSystem,
    base: str,
    root: str,
    prefixes: Sequence[str],
    plate: str,
    retries: int,
    backoff: float,
    log: logging.Logger,
) -> dict[str, int]:
    """Key -> size of every object under each prefix (one recursive listing per prefix)."""
    sizes: dict[str, int] = {}
    strip = f"{base}/"
    for prefix in prefixes:
        path = f"{base}/{prefix}"
        with contextlib.suppress(AttributeError):
            fs.invalidate_cache(path)

        def find(path: str = path) -> dict[str, dict[str, Any]]:
            try:
                found = fs.find(path, detail=True)
            except FileNotFoundError:
                return {}
            return found if isinstance(found, dict) else {}

        try:
            listing = with_retries(
                f"plate {plate}: listing {gallery_url(root, base, prefix)}", find, retries, backoff, log
            )
        except PermissionError as exc:
            raise GalleryError(
                f"plate {plate}: access denied listing {gallery_url(root, base, prefix)} ({exc})"
            ) from exc
        except GalleryError:
            raise
        except Exception as exc:
            raise GalleryError(
                f"plate {plate}: cannot list {gallery_url(root, base, prefix)}: {type(exc).__name__}: {exc}"
            ) from exc
        for obj_path, info in listing.items():
            if info.get("type", "file") != "file":
                continue
            obj_path = obj_path.replace("\\", "/")
            if obj_path.startswith(strip):
                size = info.get("size", info.get("Size"))
                if size is not None:
                    sizes[obj_path[len(strip) :]] = int(size)
    return sizes


def _fetch_one(
    fs: fsspec.AbstractFileSystem,
    rpath: str,
    url: str,
    local: Path,
    size: int,
    retries: int,
    backoff: float,
    log: logging.Logger,
) -> bool:
    """Download one object to ``local`` through a ``.part`` temporary; False if the gallery says 404.

    The temporary is renamed onto ``local`` only when its size equals the listing's ``size``.
    """

    def attempt() -> None:
        with atomic_path(local, suffix=PART_SUFFIX) as tmp:
            fs.get_file(rpath, str(tmp))
            got = tmp.stat().st_size
            if got != size:
                raise SizeMismatch(f"downloaded {got} bytes, the listing says {size}")

    try:
        with_retries(url, attempt, retries, backoff, log)
    except FileNotFoundError as exc:
        if not local.parent.is_dir():  # our side vanished (output folder removed mid-run): not a 404
            raise GalleryError(f"{url}: local folder {local.parent} disappeared during the download") from exc
        log.warning("%s: listed but not found when fetched (deleted meanwhile?); treated as missing", url)
        return False
    except PermissionError as exc:
        raise GalleryError(f"{url}: access denied ({exc}); is the gallery readable with anon=...?") from exc
    except GalleryError:
        raise
    except Exception as exc:
        raise GalleryError(f"{url}: cannot fetch: {type(exc).__name__}: {exc}") from exc
    return True


def _remove_stale_parts(images: Path, names: set[str], log: logging.Logger) -> int:
    """Delete ``.part`` temporaries that an interrupted earlier run left beside the images."""
    removed = 0
    for entry in images.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX) and entry.is_file():
            original = entry.name[1 : -len(PART_SUFFIX)].rsplit(".", 1)[0]
            if original in names:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
    if removed:
        log.info("removed %d partial file(s) of an interrupted download in %s", removed, images)
    return removed


def _select(
    table: pd.DataFrame, plate: str, wells: Sequence[str] | None, sites: Sequence[int] | None, log: logging.Logger
) -> pd.DataFrame:
    if wells is not None:
        wanted = set()
        for well in wells:
            try:
                wanted.add(layout.well_name(*normalise_well(well)))
            except ValueError:
                raise GalleryError(f"plate {plate}: unparsable well {well!r} in the wells subset") from None
        absent = sorted(wanted - set(table["Metadata_Well"]))
        if absent:
            log.warning("plate %s: wells %s of the subset are not in load_data.csv", plate, absent)
        table = table[table["Metadata_Well"].isin(wanted)]
    if sites is not None:
        wanted_sites = {int(s) for s in sites}
        table = table[table["Metadata_Site"].isin(wanted_sites)]
    if len(table) == 0:
        raise GalleryError(f"plate {plate}: no field of load_data.csv matches wells={wells} sites={sites}")
    return table.reset_index(drop=True)


def _image_shape(path: Path) -> tuple[int, ...]:
    """Shape of the first page of a TIFF, from its header (no decoding)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tuple(tif.pages[0].shape)


def _download_illumination(
    fs: fsspec.AbstractFileSystem,
    base: str,
    root: str,
    plate: str,
    gallery: GalleryLayout,
    illum_dir: Path,
    image_shape: tuple[int, ...] | None,
    retries: int,
    backoff: float,
    log: logging.Logger,
) -> dict[str, str]:
    """Fetch the plate's 8 illumination functions into ``illum_dir``; channel -> local path, or {} when the
    gallery lacks any of them (logged: the plate runs uncorrected).

    Resumable like the images (a local file of the listed size is kept). Each function is checked
    (:func:`cellresdm.illumination.load_function`) against ``image_shape``.

    Raises:
        GalleryError: a function cannot be fetched, or is unusable (naming its key).
    """
    from cellresdm.illumination import load_function

    prefix = gallery.illum_prefix(plate)
    sizes = _list_sizes(fs, base, root, [prefix], plate, retries, backoff, log)
    keys = {ch: gallery.illum_key(plate, ch) for ch in ALL_CHANNELS}
    absent = [key for key in keys.values() if key not in sizes]
    if absent:
        if len(absent) == len(keys):
            log.warning(
                "plate %s: no illumination functions in the gallery (%s); the plate runs uncorrected",
                plate,
                gallery_url(root, base, prefix),
            )
        else:
            log.warning(
                "plate %s: the gallery lacks %d of the 8 illumination functions (%s); the plate runs uncorrected",
                plate,
                len(absent),
                ", ".join(gallery_url(root, base, k) for k in absent),
            )
        return {}
    illum_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(illum_dir, {k.rsplit("/", 1)[-1] for k in keys.values()}, log)
    paths: dict[str, str] = {}
    fetched = 0
    for channel, key in keys.items():
        local = illum_dir / key.rsplit("/", 1)[-1]
        have = local.stat().st_size if local.exists() else None
        if have != sizes[key]:
            url = gallery_url(root, base, key)
            if not _fetch_one(fs, f"{base}/{key}", url, local, sizes[key], retries, backoff, log):
                raise GalleryError(f"plate {plate}: illumination function {url} vanished during the download")
            fetched += 1
        try:
            load_function(local, image_shape[:2] if image_shape is not None and len(image_shape) >= 2 else None)
        except CellResDMError as exc:
            raise GalleryError(
                f"plate {plate}: unusable illumination function {gallery_url(root, base, key)}: {exc}"
            ) from exc
        paths[channel] = str(local)
    log.info("plate %s: 8 illumination functions in %s (%d fetched); the plate is corrected", plate, illum_dir, fetched)
    return paths


def download_plate(
    plate: str,
    images_dir: str | os.PathLike,
    load_data_out: str | os.PathLike,
    root: str,
    endpoint_url: str | None = None,
    anon: bool = True,
    layout: GalleryLayout = GalleryLayout(),  # noqa: B008 (frozen dataclass)
    wells: Sequence[str] | None = None,
    sites: Sequence[int] | None = None,
    workers: int = 8,
    retries: int = 5,
    backoff: float = 0.5,
    progress: bool = True,
    log: logging.Logger | None = None,
    illum_dir: str | os.PathLike | None = None,
    channels: Sequence[str] = ALL_CHANNELS,
) -> pd.DataFrame:
    """Fetch the 8 channels of every field of ``plate`` (or of the wells/sites subset) into ``images_dir``.

    Files go to ``images_dir/<gallery file name>``; then the table is written atomically to ``load_data_out``
    (parquet). Resumable: a rerun skips every file whose local size equals the gallery listing's size.

    Args:
        plate: plate barcode (``Metadata_Plate``).
        images_dir: folder of the plate's image files.
        load_data_out: the plate's local load_data table (parquet).
        root: gallery root, ``s3://BUCKET`` or a local directory (see :func:`open_gallery`).
        endpoint_url: S3 endpoint of a mirror (None = AWS).
        anon: anonymous S3 access.
        layout: project/source/batch of the keys.
        wells: only these wells (None = all); sites: only these sites (None = all).
        workers: parallel downloads.
        retries: retries of a transient error per file (and per listing); backoff: first backoff in seconds,
            doubled per retry, with jitter.
        progress: show a tqdm bar (bytes) on stderr.
        log: logger of the summary (defaults to this module's).
        illum_dir: folder of the plate's illumination functions (``{plate}_Illum{channel}.npy``, fetched from
            :meth:`GalleryLayout.illum_prefix`); None fetches none (correction off). A plate whose gallery
            folder lacks any of the 8 functions is named in a warning and runs uncorrected.
        channels: the channels to fetch (a predict plate: the brightfield planes its model takes); load_data
            must have a column for each, the others get None paths.

    Returns:
        The :func:`read_load_data` columns of the selected fields plus ``path_{ch}``: the local path (str) of
        each channel, or None when its key is absent from the gallery (not an error: the filter stage marks
        the field ``missing``), and ``illum_{ch}``: the local path of the channel's illumination function on
        every row, None on every row of an uncorrected plate (:mod:`cellresdm.illumination`).
        ``table.attrs['download']`` holds :class:`DownloadStats` as a dict.

    Raises:
        GalleryError: plate absent, load_data.csv unusable, no field selected, nothing of the plate in the
            gallery, access denied, or a file still failing (or of the wrong size) after ``retries`` retries;
            the message names the plate or the key and the last error.
    """
    log = log or _log
    if workers < 1:
        raise GalleryError(f"download of plate {plate}: workers must be >= 1, got {workers}")
    if retries < 0:
        raise GalleryError(f"download of plate {plate}: retries must be >= 0, got {retries}")
    root = os.fspath(root)
    images = Path(images_dir)
    start = time.perf_counter()

    fs, base = open_gallery(root, endpoint_url, anon)
    table = read_load_data_from(fs, base, root, plate, layout, retries, backoff, log, channels=channels)
    table = _select(table, plate, wells, sites, log)

    key_cols = [key_column(ch) for ch in ALL_CHANNELS]
    keys = sorted({k for col in key_cols for k in table[col] if is_key(k)})
    by_name: dict[str, str] = {}
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        if by_name.setdefault(name, key) != key:
            raise GalleryError(f"plate {plate}: two keys share the file name {name}: {by_name[name]} and {key}")
    prefixes = sorted({key.rsplit("/", 1)[0] for key in keys if "/" in key})
    sizes = _list_sizes(fs, base, root, prefixes, plate, retries, backoff, log)
    if keys and not any(key in sizes for key in keys):
        raise GalleryError(
            f"plate {plate}: none of the {len(keys)} images of load_data.csv is in the gallery "
            f"(listed {', '.join(gallery_url(root, base, p) for p in prefixes)}); wrong root, endpoint or layout?"
        )

    images.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(images, set(by_name), log)

    stats = DownloadStats()
    local_of: dict[str, Path | None] = {}
    todo: list[str] = []
    for key in keys:
        local = images / key.rsplit("/", 1)[-1]
        if key not in sizes:
            local_of[key] = None
            stats.missing_keys.append(key)
            continue
        local_of[key] = local
        try:
            have = local.stat().st_size
        except FileNotFoundError:
            have = None
        if have == sizes[key]:
            stats.skipped += 1
        else:
            todo.append(key)

    def fetch(key: str) -> bool:
        path = local_of[key]
        assert path is not None
        return _fetch_one(fs, f"{base}/{key}", gallery_url(root, base, key), path, sizes[key], retries, backoff, log)

    def account(key: str, ok: bool) -> None:
        if ok:
            stats.fetched += 1
            stats.bytes_fetched += sizes[key]
        else:
            local_of[key] = None
            stats.missing_keys.append(key)

    total = sum(sizes[k] for k in todo)
    log.info(
        "plate %s: %d field(s), %d image(s): %d to fetch (%.1f MB), %d already present, %d absent from the gallery",
        plate,
        len(table),
        len(keys),
        len(todo),
        total / 1e6,
        stats.skipped,
        len(stats.missing_keys),
    )
    fetch_start = time.perf_counter()
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"download {plate}",
        disable=not progress or not todo,
        leave=False,
    ) as bar:
        if todo:
            _run_parallel(todo, fetch, workers, lambda key, ok: (account(key, ok), bar.update(sizes[key])))

    # verification of every present file against the listing; a mismatch is fetched again
    for key in keys:
        path = local_of[key]
        if path is None:
            continue
        got = path.stat().st_size if path.exists() else None
        if got != sizes[key]:
            log.warning("%s: local size %s != listed %d after download; fetching again", path, got, sizes[key])
            ok = fetch(key)
            got = path.stat().st_size if ok and path.exists() else None
            if ok and got != sizes[key]:
                raise GalleryError(
                    f"{gallery_url(root, base, key)}: local file {path} has {got} bytes, listed {sizes[key]}"
                )
            account(key, ok)
    stats.seconds = time.perf_counter() - fetch_start
    stats.missing = len(stats.missing_keys)

    result = table.copy()
    for ch in ALL_CHANNELS:
        paths = [
            str(local_of[k]) if is_key(k) and local_of.get(k) is not None else None for k in result[key_column(ch)]
        ]
        result[path_column(ch)] = pd.Series(paths, index=result.index, dtype=object)
    functions: dict[str, str] = {}
    if illum_dir is None:
        log.info("plate %s: illumination correction off; the plate runs uncorrected", plate)
    else:
        present = [p for p in local_of.values() if p is not None]
        shape = _image_shape(present[0]) if present else None
        functions = _download_illumination(fs, base, root, plate, layout, Path(illum_dir), shape, retries, backoff, log)
    for ch in ALL_CHANNELS:
        result[illum_column(ch)] = pd.Series([functions.get(ch)] * len(result), index=result.index, dtype=object)
    write_parquet(result, load_data_out)
    result.attrs["download"] = stats.as_dict()
    log.info(
        "plate %s: fetched %d file(s), skipped %d, missing %d; %.1f MB in %.1f s (%.1f MB/s); total %.1f s",
        plate,
        stats.fetched,
        stats.skipped,
        stats.missing,
        stats.bytes_fetched / 1e6,
        stats.seconds,
        stats.mb_per_s,
        time.perf_counter() - start,
    )
    if stats.missing:
        log.warning(
            "plate %s: %d image(s) named in load_data.csv are absent from the gallery, e.g. %s",
            plate,
            stats.missing,
            stats.missing_keys[:3],
        )
    return result


def _run_parallel(
    keys: Sequence[str],
    fetch: Callable[[str], bool],
    workers: int,
    done: Callable[[str, bool], Any],
) -> None:
    """Run ``fetch`` over ``keys`` in a thread pool; stop scheduling and re-raise at the first error."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gallery-download")
    try:
        futures: dict[Future[bool], str] = {pool.submit(fetch, key): key for key in keys}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in finished:
                exc = fut.exception()
                if exc is not None:
                    for other in pending:
                        other.cancel()
                    raise exc
                done(futures[fut], fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
