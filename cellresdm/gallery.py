"""Reading plates from the Cell Painting Gallery: load_data.csv parsing and a resumable, parallel download.

A *gallery root* is either ``s3://BUCKET`` (anonymous by default, optionally through ``endpoint_url`` for a
mirror or a local S3 server) or a local directory mirroring the bucket (the demo's synthetic gallery). Both go
through fsspec, so the same code path serves both. Keys inside the root come from :class:`GalleryLayout`.

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

import asyncio
import contextlib
import io
import logging
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

import fsspec
import pandas as pd
from tqdm import tqdm

from cellresdm import layout
from cellresdm.errors import CellResDMError, GalleryError
from cellresdm.io import atomic_path, write_parquet
from cellresdm.layout import ALL_CHANNELS, GalleryLayout, illum_column, path_column

__all__ = [
    "DownloadStats",
    "download_plate",
    "fetch_load_data",
    "key_column",
    "open_gallery",
    "read_load_data",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")

#: Suffix of the temporaries a download writes before renaming (``.<file name>.<random>.part``).
PART_SUFFIX = ".part"
#: Cap of one backoff sleep, in seconds.
MAX_BACKOFF = 30.0
_WELL_RE = re.compile(r"^([A-P])0?(\d{1,2})$")
_THROTTLING_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "TooManyRequests",
}


def key_column(channel: str) -> str:
    """Column of :func:`read_load_data`'s table holding the gallery key of ``channel`` (``key_DNA``)."""
    return f"key_{channel}"


# ----------------------------------------------------------------------------------------------- filesystem


def open_gallery(
    root: str | os.PathLike, endpoint_url: str | None = None, anon: bool = True
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and base path (bucket, or local directory) of a gallery root.

    Args:
        root: ``s3://BUCKET`` (optionally ``s3://BUCKET/prefix``) or a local directory mirroring the bucket.
        endpoint_url: S3 endpoint of a mirror or local server (None = AWS). Ignored for a local root.
        anon: anonymous (unsigned) S3 requests; the Cell Painting Gallery allows them.

    Returns:
        ``(fs, base)``: keys of :class:`GalleryLayout` live at ``f"{base}/{key}"`` in ``fs``. The S3
        filesystem is a fresh instance (no listing cache shared with other callers) whose own retries (s3fs
        and botocore) are turned off: the callers of this module retry with backoff themselves.
    """
    root = os.fspath(root)
    if root.startswith("s3://") or root.startswith("s3a://"):
        import s3fs

        base = root.split("://", 1)[1].strip("/")
        if not base:
            raise GalleryError(f"gallery root {root!r} names no bucket (expected s3://BUCKET)")
        client_kwargs: dict[str, Any] = {}
        if endpoint_url:
            client_kwargs["endpoint_url"] = endpoint_url
        fs = s3fs.S3FileSystem(
            anon=anon,
            client_kwargs=client_kwargs,
            config_kwargs={
                "retries": {"total_max_attempts": 1, "mode": "standard"},
                "connect_timeout": 20,
                "read_timeout": 60,
                "max_pool_connections": 64,
            },
            skip_instance_cache=True,
        )
        fs.retries = 1  # one attempt per s3fs call, including its resume-on-broken-body loop in get_file
        return fs, base
    if "://" in root and not root.startswith("file://"):
        fs, base = fsspec.core.url_to_fs(root)
        return fs, base.rstrip("/")
    fs = fsspec.filesystem("file")
    base = fs._strip_protocol(os.path.expanduser(root)).rstrip("/")
    if not os.path.isdir(base):
        raise GalleryError(f"gallery root {root!r} is neither s3://BUCKET nor an existing local directory")
    return fs, base


def _url(root: str, base: str, key: str) -> str:
    """Human-readable location of ``key`` for messages (``s3://bucket/key`` or the local path)."""
    root = os.fspath(root)
    if "://" in root and not root.startswith("file://"):
        return f"{root.split('://', 1)[0]}://{base}/{key}"
    return f"{base}/{key}"


# ----------------------------------------------------------------------------------------------- retries


class _SizeMismatch(OSError):
    """A downloaded object's size differs from the listing (a truncated transfer); retried."""


def _client_error_status(exc: BaseException) -> tuple[int | None, str | None]:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None, None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    return (int(status) if status is not None else None), code


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, asyncio.TimeoutError]
    with contextlib.suppress(ImportError):
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    with contextlib.suppress(ImportError):
        import aiohttp

        types.append(aiohttp.ClientError)
    with contextlib.suppress(ImportError):
        from botocore import exceptions as bex

        for name in (
            "HTTPClientError",  # base of ConnectionError, EndpointConnectionError, ReadTimeoutError, ...
            "IncompleteReadError",
            "ResponseStreamingError",
            "ResponseParserError",
            "ConnectionClosedError",
        ):
            if hasattr(bex, name):
                types.append(getattr(bex, name))
    return tuple(types)


_TRANSIENT_TYPES = _transient_types()


def _is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: 5xx/throttling, resets, timeouts, truncated bodies, size mismatches."""
    if isinstance(exc, GalleryError):
        return False
    if isinstance(exc, _SizeMismatch):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    # s3fs translates botocore ClientErrors into OSErrors and keeps the original as __cause__
    for err in (exc, exc.__cause__):
        if err is None:
            continue
        status, code = _client_error_status(err)
        if status is not None or code is not None:
            if code in _THROTTLING_CODES:
                return True
            return status is not None and (status >= 500 or status in (408, 429))
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    # remaining OSErrors: socket errors, EBUSY/EREMOTEIO from s3fs, disk hiccups of a network mount
    return isinstance(exc, OSError)


def _sleep_backoff(attempt: int, backoff: float) -> None:
    """Exponential backoff with full jitter: ``backoff * 2**attempt * U(0.5, 1.5)``, capped."""
    if backoff > 0:
        time.sleep(min(MAX_BACKOFF, backoff * 2**attempt) * random.uniform(0.5, 1.5))


def _with_retries(
    what: str,
    func: Callable[[], T],
    retries: int,
    backoff: float,
    log: logging.Logger,
) -> T:
    """Call ``func``; retry transient errors ``retries`` times; raise :class:`GalleryError` naming ``what``.

    Non-transient errors (FileNotFoundError, PermissionError, 4xx) propagate unchanged for the caller to word.
    """
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            return func()
        except Exception as exc:
            if not _is_transient(exc):
                raise
            last = exc
            if attempt < retries:
                log.debug("%s: attempt %d failed (%s: %s), retrying", what, attempt + 1, type(exc).__name__, exc)
                _sleep_backoff(attempt, backoff)
    raise GalleryError(
        f"{what}: failed after {retries + 1} attempt(s); last error: {type(last).__name__}: {last}"
    ) from last


# ----------------------------------------------------------------------------------------------- load_data


def _source_name(source: str | os.PathLike | IO) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "load_data.csv"))


def _images_plate_dir(parts: Sequence[str]) -> tuple[int, str] | None:
    """Index of the last ``Images`` component of a path and the plate folder before it."""
    for idx in range(len(parts) - 1, 0, -1):
        if parts[idx] == "Images":
            return idx, parts[idx - 1]
    return None


def _key_from_location(location: str, filename: str | None, gallery: GalleryLayout) -> str:
    """Bucket key of one image from an ``s3://`` URL/path or from a local path of an old bucket mount.

    Raises ValueError (worded by the caller) when the location cannot be mapped to a key.
    """
    location = location.strip()
    if location.startswith("s3://") or location.startswith("s3a://"):
        rest = location.split("://", 1)[1]
        _bucket, _, key = rest.partition("/")
        key = key.strip("/")
        if filename:
            key = f"{key}/{filename}" if key else filename
        if not key:
            raise ValueError(f"{location!r} names no object")
        return key
    if location.startswith("file://"):
        location = location[len("file://") :]
    parts = [p for p in PurePosixPath(location.replace("\\", "/")).parts if p not in ("/", "")]
    if filename:
        parts = [*parts, filename]
    found = _images_plate_dir(parts)
    if found is None or found[0] != len(parts) - 2:
        raise ValueError(f"{location!r} is neither an s3:// URL nor a path ending in <plate folder>/Images/<file>")
    return gallery.image_key(found[1], parts[-1])


def _plate_dir_of(key: str) -> str:
    parts = key.split("/")
    found = _images_plate_dir(parts)
    if found is not None:
        return found[1]
    return parts[-2] if len(parts) >= 2 else ""


def _normalise_well(well: str) -> tuple[int, int]:
    match = _WELL_RE.match(str(well).strip().upper())
    if not match:
        raise ValueError(well)
    row, col = ord(match.group(1)) - ord("A") + 1, int(match.group(2))
    if not 1 <= col <= layout.N_COLS:
        raise ValueError(well)
    return row, col


def _is_key(value: Any) -> bool:
    """A key cell holds a key (pandas >= 3 gives NaN, not None, for an empty cell of a str column)."""
    return isinstance(value, str) and value != ""


def _present(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def read_load_data(
    source: str | os.PathLike | IO,
    plate: str,
    gallery: GalleryLayout | None = None,
    name: str | None = None,
) -> pd.DataFrame:
    """Parse a CellProfiler load_data.csv of the gallery into one row per field of ``plate``.

    Both forms are accepted, per channel: ``URL_Orig{ch}`` (full ``s3://`` URLs) or ``FileName_Orig{ch}`` +
    ``PathName_Orig{ch}``. Paths that are ``s3://`` URLs are stripped to the key; local absolute paths of an
    old bucket mount (``.../<plate_dir>/Images``) are rebuilt into a key with ``gallery`` (default layout).

    Args:
        source: path or open text/binary file of the CSV.
        plate: plate barcode; rows of other plates are dropped (a file without ``Metadata_Plate`` is taken
            to hold only this plate).
        gallery: layout used to rebuild keys from local mount paths.
        name: how messages name the file (defaults to the path or the file object's name).

    Returns:
        Columns ``Metadata_Plate, Metadata_Well (A01), Metadata_Row, Metadata_Col, Metadata_Site`` (ints),
        ``field`` (:func:`layout.field_id`), ``plate_dir`` and ``key_{ch}`` for all 8 channels of
        :data:`layout.ALL_CHANNELS` (key relative to the bucket root; None where the CSV cell is empty),
        sorted by row, column and site.

    Raises:
        GalleryError: naming the file, plate and column, for a channel without a column, no row of the plate,
            an unparsable well, site or path, or a field listed twice.
    """
    gallery = gallery or GalleryLayout()
    name = name or _source_name(source)
    where = f"load_data.csv for plate {plate} ({name})"
    try:
        df = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise GalleryError(f"{where} is not a readable CSV: {exc}") from exc

    forms: dict[str, tuple[str, ...]] = {}
    for ch in layout.ALL_CHANNELS:
        url, fname, pname = layout.url_column(ch), layout.filename_column(ch), layout.pathname_column(ch)
        if url in df.columns:
            forms[ch] = (url,)
        elif fname in df.columns and pname in df.columns:
            forms[ch] = (fname, pname)
        else:
            raise GalleryError(f"{where} has no column for channel {ch} ({url} or {fname}/{pname})")
    for col in ("Metadata_Well", "Metadata_Site"):
        if col not in df.columns:
            raise GalleryError(f"{where} has no column {col}")

    if "Metadata_Plate" in df.columns:
        df = df[df["Metadata_Plate"].str.strip() == str(plate)]
    if len(df) == 0:
        raise GalleryError(f"{where} has no rows for plate {plate} (column Metadata_Plate)")

    records = []
    for line, rec in zip(df.index, df.to_dict("records"), strict=True):
        csv_line = int(line) + 2  # header is line 1
        try:
            row, col = _normalise_well(rec["Metadata_Well"])
        except ValueError:
            raise GalleryError(
                f"{where}, line {csv_line}: unparsable well {rec['Metadata_Well']!r} in column Metadata_Well"
                " (expected e.g. A01)"
            ) from None
        try:
            site = int(float(rec["Metadata_Site"]))
            if site < 1 or site != float(rec["Metadata_Site"]):
                raise ValueError
        except ValueError:
            raise GalleryError(
                f"{where}, line {csv_line}: unparsable site {rec['Metadata_Site']!r} in column Metadata_Site"
            ) from None
        out: dict[str, Any] = {
            "Metadata_Plate": str(plate),
            "Metadata_Well": layout.well_name(row, col),
            "Metadata_Row": row,
            "Metadata_Col": col,
            "Metadata_Site": site,
            "field": layout.field_id(row, col, site),
            "plate_dir": None,
        }
        for ch, cols in forms.items():
            key = None
            try:
                if len(cols) == 1 and _present(rec[cols[0]]):
                    key = _key_from_location(rec[cols[0]], None, gallery)
                elif len(cols) == 2 and _present(rec[cols[0]]) and _present(rec[cols[1]]):
                    key = _key_from_location(rec[cols[1]], rec[cols[0]].strip(), gallery)
            except ValueError as exc:
                raise GalleryError(f"{where}, line {csv_line}, column {'/'.join(cols)}: {exc}") from None
            out[key_column(ch)] = key
            if key is not None and out["plate_dir"] is None:
                out["plate_dir"] = _plate_dir_of(key)
        records.append(out)

    table = pd.DataFrame.from_records(records)
    dup = table["field"][table["field"].duplicated()].unique().tolist()
    if dup:
        raise GalleryError(f"{where} lists fields more than once (columns Metadata_Well/Metadata_Site): {dup[:10]}")
    table = table.sort_values(["Metadata_Row", "Metadata_Col", "Metadata_Site"], kind="stable")
    return table.reset_index(drop=True)


def _read_load_data_from(
    fs: fsspec.AbstractFileSystem,
    base: str,
    root: str,
    plate: str,
    gallery: GalleryLayout,
    retries: int,
    backoff: float,
    log: logging.Logger,
) -> pd.DataFrame:
    key = gallery.load_data_key(plate)
    url = _url(root, base, key)

    def read() -> bytes:
        return fs.cat_file(f"{base}/{key}")

    try:
        data = _with_retries(f"load_data.csv of plate {plate} ({url})", read, retries, backoff, log)
    except FileNotFoundError:
        raise GalleryError(
            f"plate {plate} is not in the gallery {root}: no load_data.csv at {url} (key {key})"
        ) from None
    except PermissionError as exc:
        raise GalleryError(f"plate {plate}: access denied to {url} ({exc})") from exc
    except GalleryError:
        raise
    except Exception as exc:
        raise GalleryError(f"plate {plate}: cannot read {url}: {type(exc).__name__}: {exc}") from exc
    return read_load_data(io.BytesIO(data), plate, gallery, name=url)


def fetch_load_data(
    plate: str,
    root: str,
    endpoint_url: str | None = None,
    anon: bool = True,
    layout: GalleryLayout = GalleryLayout(),  # noqa: B008 (frozen dataclass)
    *,
    retries: int = 5,
    backoff: float = 0.5,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Read and parse the plate's load_data.csv from the gallery (see :func:`read_load_data`).

    Raises:
        GalleryError: the plate is absent (the message names the plate and the key/URL tried), or the file
            cannot be fetched after ``retries`` retries, or it does not parse.
    """
    fs, base = open_gallery(root, endpoint_url, anon)
    return _read_load_data_from(fs, base, os.fspath(root), plate, layout, retries, backoff, log or _log)


# ----------------------------------------------------------------------------------------------- download


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
            listing = _with_retries(f"plate {plate}: listing {_url(root, base, prefix)}", find, retries, backoff, log)
        except PermissionError as exc:
            raise GalleryError(f"plate {plate}: access denied listing {_url(root, base, prefix)} ({exc})") from exc
        except GalleryError:
            raise
        except Exception as exc:
            raise GalleryError(
                f"plate {plate}: cannot list {_url(root, base, prefix)}: {type(exc).__name__}: {exc}"
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
                raise _SizeMismatch(f"downloaded {got} bytes, the listing says {size}")

    try:
        _with_retries(url, attempt, retries, backoff, log)
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
                wanted.add(layout.well_name(*_normalise_well(well)))
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
                _url(root, base, prefix),
            )
        else:
            log.warning(
                "plate %s: the gallery lacks %d of the 8 illumination functions (%s); the plate runs uncorrected",
                plate,
                len(absent),
                ", ".join(_url(root, base, k) for k in absent),
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
            url = _url(root, base, key)
            if not _fetch_one(fs, f"{base}/{key}", url, local, sizes[key], retries, backoff, log):
                raise GalleryError(f"plate {plate}: illumination function {url} vanished during the download")
            fetched += 1
        try:
            load_function(local, image_shape[:2] if image_shape is not None and len(image_shape) >= 2 else None)
        except CellResDMError as exc:
            raise GalleryError(f"plate {plate}: unusable illumination function {_url(root, base, key)}: {exc}") from exc
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
    table = _read_load_data_from(fs, base, root, plate, layout, retries, backoff, log)
    table = _select(table, plate, wells, sites, log)

    key_cols = [key_column(ch) for ch in ALL_CHANNELS]
    keys = sorted({k for col in key_cols for k in table[col] if _is_key(k)})
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
            f"(listed {', '.join(_url(root, base, p) for p in prefixes)}); wrong root, endpoint or layout?"
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
        return _fetch_one(fs, f"{base}/{key}", _url(root, base, key), path, sizes[key], retries, backoff, log)

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
                raise GalleryError(f"{_url(root, base, key)}: local file {path} has {got} bytes, listed {sizes[key]}")
            account(key, ok)
    stats.seconds = time.perf_counter() - fetch_start
    stats.missing = len(stats.missing_keys)

    result = table.copy()
    for ch in ALL_CHANNELS:
        paths = [
            str(local_of[k]) if _is_key(k) and local_of.get(k) is not None else None for k in result[key_column(ch)]
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
