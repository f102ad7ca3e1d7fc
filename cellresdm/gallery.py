"""Reading plates from the Cell Painting Gallery: the gallery's file system, retries of transient errors, and
load_data.csv parsing.

A *gallery root* is either ``s3://BUCKET`` (anonymous by default, optionally through ``endpoint_url`` for a
mirror or a local S3 server) or a local directory mirroring the bucket (the demo's synthetic gallery). Both go
through fsspec, so the same code path serves both. Keys inside the root come from :class:`GalleryLayout`.
The resumable, parallel download of a plate's files is :mod:`cellresdm.download`.
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
from pathlib import PurePosixPath
from typing import IO, Any, TypeVar

import fsspec
import pandas as pd

from cellresdm import layout
from cellresdm.errors import GalleryError
from cellresdm.layout import GalleryLayout

__all__ = [
    "fetch_load_data",
    "key_column",
    "open_gallery",
    "read_load_data",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")

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


def gallery_url(root: str, base: str, key: str) -> str:
    """Human-readable location of ``key`` for messages (``s3://bucket/key`` or the local path)."""
    root = os.fspath(root)
    if "://" in root and not root.startswith("file://"):
        return f"{root.split('://', 1)[0]}://{base}/{key}"
    return f"{base}/{key}"


# ----------------------------------------------------------------------------------------------- retries


class SizeMismatch(OSError):
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
    if isinstance(exc, SizeMismatch):
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


def with_retries(
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


def normalise_well(well: str) -> tuple[int, int]:
    match = _WELL_RE.match(str(well).strip().upper())
    if not match:
        raise ValueError(well)
    row, col = ord(match.group(1)) - ord("A") + 1, int(match.group(2))
    if not 1 <= col <= layout.N_COLS:
        raise ValueError(well)
    return row, col


def is_key(value: Any) -> bool:
    """A key cell holds a key (pandas >= 3 gives NaN, not None, for an empty cell of a str column)."""
    return isinstance(value, str) and value != ""


def _present(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def read_load_data(
    source: str | os.PathLike | IO,
    plate: str,
    gallery: GalleryLayout | None = None,
    name: str | None = None,
    channels: Sequence[str] = layout.ALL_CHANNELS,
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
        channels: the channels the plate must have a column for (all 8; a predict plate only the brightfield
            planes its model takes); the keys of the others are None (not fetched), whether or not a column
            names them.

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
    for ch in channels:
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
            row, col = normalise_well(rec["Metadata_Well"])
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
        out.update({key_column(ch): None for ch in layout.ALL_CHANNELS})
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


def read_load_data_from(
    fs: fsspec.AbstractFileSystem,
    base: str,
    root: str,
    plate: str,
    gallery: GalleryLayout,
    retries: int,
    backoff: float,
    log: logging.Logger,
    channels: Sequence[str] = layout.ALL_CHANNELS,
) -> pd.DataFrame:
    key = gallery.load_data_key(plate)
    url = gallery_url(root, base, key)

    def read() -> bytes:
        return fs.cat_file(f"{base}/{key}")

    try:
        data = with_retries(f"load_data.csv of plate {plate} ({url})", read, retries, backoff, log)
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
    return read_load_data(io.BytesIO(data), plate, gallery, name=url, channels=channels)


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
    return read_load_data_from(fs, base, os.fspath(root), plate, layout, retries, backoff, log or _log)
