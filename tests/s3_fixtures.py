"""Local S3 for tests: a moto server on 127.0.0.1, a fake gallery plate in the real layout, and a
fault-injecting HTTP proxy in front of moto.

Make the fixtures visible in a test module by binding them there (``tests/`` is on sys.path):
``import s3_fixtures; moto_s3, fault_proxy = s3_fixtures.moto_s3, s3_fixtures.fault_proxy``.
Nothing here talks to the internet; AWS settings of the environment are replaced by dummies while the
server runs, so no real credentials or config files are read.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellresdm import layout
from cellresdm.layout import GalleryLayout

BUCKET = layout.BUCKET
#: The small plate every moto-backed test finds in the bucket.
PLATE = "FAKE0001"
PLATE_WELLS = ("B02", "B03", "C05")
PLATE_SITES = (1, 2)
#: A plate whose load_data.csv names one field absent from the bucket and one field missing one channel.
PLATE_GAPS = "FAKE0002"

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNSET_AWS_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def plate_dir_of(plate: str) -> str:
    """Gallery folder of a fake plate, in the real ``<barcode>__<date>-Measurement<n>`` form."""
    return f"{plate}__2020-11-05T19_51_35-Measurement1"


def tiff_bytes(array: np.ndarray, compression: str | None = "lzw") -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, compression=compression)
    return buf.getvalue()


@dataclass
class FakePlate:
    """A plate written to a bucket: its objects (key -> bytes), load_data.csv and fields."""

    plate: str
    plate_dir: str
    objects: dict[str, bytes]
    load_data_key: str
    load_data_csv: str
    fields: list[tuple[str, int]]

    def image_key(self, well: str, site: int, channel: str) -> str:
        row, col = layout.parse_well(well)
        return GalleryLayout().image_key(self.plate_dir, layout.image_filename(row, col, site, channel))

    @property
    def image_keys(self) -> list[str]:
        return sorted(k for k in self.objects if k != self.load_data_key)

    @property
    def nbytes(self) -> int:
        return sum(len(v) for k, v in self.objects.items() if k != self.load_data_key)


def make_plate(
    plate: str,
    wells: Iterable[str],
    sites: Iterable[int],
    size: int = 64,
    compression: str | None = "lzw",
    seed: int = 0,
    absent_fields: Iterable[tuple[str, int]] = (),
    absent_channels: Iterable[tuple[str, int, str]] = (),
    gallery: GalleryLayout | None = None,
) -> FakePlate:
    """Objects of one fake plate in the gallery layout, with a load_data.csv of ``URL_Orig*`` columns.

    ``absent_fields`` are listed in load_data.csv but get no objects; ``absent_channels``
    (well, site, channel) likewise for single channels. Random uint16 images (``compression=None`` gives
    the real 2.3 MB per 1080x1080 field).
    """
    gallery = gallery or GalleryLayout()
    rng = np.random.default_rng(seed)
    plate_dir = plate_dir_of(plate)
    absent_fields, absent_channels = set(absent_fields), set(absent_channels)
    objects: dict[str, bytes] = {}
    rows, fields = [], []
    for well in wells:
        row, col = layout.parse_well(well)
        for site in sites:
            fields.append((well, site))
            record = {}
            for channel in layout.ALL_CHANNELS:
                key = gallery.image_key(plate_dir, layout.image_filename(row, col, site, channel))
                record[layout.url_column(channel)] = layout.s3_url(key)
                if (well, site) in absent_fields or (well, site, channel) in absent_channels:
                    continue
                objects[key] = tiff_bytes(rng.integers(0, 4096, (size, size), dtype=np.uint16), compression)
            record.update(
                Metadata_Plate=plate, Metadata_Well=well, Metadata_Site=site, Metadata_Row=row, Metadata_Col=col
            )
            rows.append(record)
    columns = [layout.url_column(c) for c in ("DNA", "ER", "RNA", "AGP", "Mito", "Brightfield", "HighZBF", "LowZBF")]
    columns += ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Row", "Metadata_Col"]
    csv = pd.DataFrame(rows, columns=columns).to_csv(index=False)
    load_data_key = gallery.load_data_key(plate)
    objects[load_data_key] = csv.encode()
    return FakePlate(plate, plate_dir, objects, load_data_key, csv, fields)


def write_plate_to_dir(plate: FakePlate, root: Path) -> Path:
    """Mirror a fake plate into a local directory standing for the bucket root."""
    for key, data in plate.objects.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# ----------------------------------------------------------------------------------------------- moto


@dataclass
class MotoS3:
    """A running moto server: its endpoint and a boto3 client with dummy credentials."""

    endpoint_url: str
    host: str
    port: int
    client: object

    def upload(self, plate: FakePlate, bucket: str = BUCKET) -> FakePlate:
        for key, data in plate.objects.items():
            self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return plate


def _public_read_policy(bucket: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "PublicRead",
                    "Effect": "Allow",
                    "Principal": "*",
                    # moto checks HEAD against s3:HeadObject (AWS uses s3:GetObject for both)
                    "Action": ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    """A moto S3 server on 127.0.0.1 (free port) with bucket ``cellpainting-gallery`` (public-read policy)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise

    with pytest.MonkeyPatch.context() as mp:
        for name in UNSET_AWS_ENV:
            mp.delenv(name, raising=False)
        for name, value in DUMMY_AWS_ENV.items():
            mp.setenv(name, value)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            client.create_bucket(Bucket=BUCKET)
            client.put_bucket_policy(Bucket=BUCKET, Policy=_public_read_policy(BUCKET))
            yield MotoS3(endpoint, host, port, client)
        finally:
            server.stop()


@dataclass
class GalleryS3:
    """The moto server with the fake plates uploaded."""

    s3: MotoS3
    plate: FakePlate
    gaps: FakePlate

    @property
    def endpoint_url(self) -> str:
        return self.s3.endpoint_url


@pytest.fixture(scope="module")
def gallery_s3(moto_s3: MotoS3) -> GalleryS3:
    """Bucket with :data:`PLATE` (3 wells x 2 sites x 8 channels, 64x64 LZW TIFFs) and :data:`PLATE_GAPS`."""
    plate = moto_s3.upload(make_plate(PLATE, PLATE_WELLS, PLATE_SITES, seed=1))
    gaps = moto_s3.upload(
        make_plate(
            PLATE_GAPS, ("B02", "B03"), (1, 2), seed=2, absent_fields=[("B03", 2)], absent_channels=[("B02", 1, "Mito")]
        )
    )
    return GalleryS3(moto_s3, plate, gaps)


# ----------------------------------------------------------------------------------------------- proxy


SLOW_DOWN_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>FAULTPROXY</RequestId></Error>"
)
ACCESS_DENIED_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>FAULTPROXY</RequestId></Error>"
)
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
}


@dataclass
class FaultPlan:
    """Which object GETs the proxy spoils. Counts are over object GETs (not listings), all keys together
    for ``*_every`` and per key for ``*_first``; a key matches ``*_keys`` when it ends with an entry."""

    fail_every: int = 0  # 503 SlowDown on every Nth object GET
    fail_first: int = 0  # 503 SlowDown on the first N GETs of every key
    fail_keys: tuple[str, ...] = ()  # always 503
    cut_every: int = 0  # full Content-Length, half the body, then close, on every Nth object GET
    cut_first: int = 0  # the same on the first N GETs of every key
    deny_keys: tuple[str, ...] = ()  # always 403 AccessDenied


@dataclass
class FaultCounts:
    requests: int = 0
    object_gets: int = 0
    injected_503: int = 0
    injected_cuts: int = 0
    injected_403: int = 0
    gets_per_key: Counter = field(default_factory=Counter)

    @property
    def injected(self) -> int:
        return self.injected_503 + self.injected_cuts + self.injected_403


class FaultProxy:
    """Threaded HTTP proxy on 127.0.0.1 that forwards to an S3 endpoint and injects :class:`FaultPlan` faults.

    Use ``proxy.endpoint_url`` as the S3 endpoint; ``proxy.plan`` sets the faults; ``proxy.counts`` tells what
    was injected. Path-style requests only (boto3 uses them for an IP endpoint).
    """

    def __init__(self, upstream_host: str, upstream_port: int, bucket: str = BUCKET):
        self.upstream = (upstream_host, upstream_port)
        self.bucket = bucket
        self.plan = FaultPlan()
        self.counts = FaultCounts()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 (signature of the base class)
                pass

            def do_GET(self):
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fault-proxy")

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def reset(self, plan: FaultPlan | None = None) -> None:
        with self._lock:
            self.plan = plan or FaultPlan()
            self.counts = FaultCounts()

    # -------------------------------------------------------------------------------------------------------

    def _object_key(self, handler: BaseHTTPRequestHandler) -> str | None:
        """Key of an object GET (path-style ``/bucket/key`` without a listing query), else None."""
        if handler.command != "GET":
            return None
        parts = urlsplit(handler.path)
        path = unquote(parts.path).lstrip("/")
        bucket, _, key = path.partition("/")
        if bucket != self.bucket or not key or "list-type" in parts.query or "prefix=" in parts.query:
            return None
        return key

    def _decide(self, key: str | None) -> str | None:
        with self._lock:
            self.counts.requests += 1
            if key is None:
                return None
            plan, counts = self.plan, self.counts
            counts.object_gets += 1
            counts.gets_per_key[key] += 1
            nth, per_key = counts.object_gets, counts.gets_per_key[key]
            if any(key.endswith(k) for k in plan.deny_keys):
                counts.injected_403 += 1
                return "403"
            if (
                any(key.endswith(k) for k in plan.fail_keys)
                or (plan.fail_every and nth % plan.fail_every == 0)
                or per_key <= plan.fail_first
            ):
                counts.injected_503 += 1
                return "503"
            if (plan.cut_every and nth % plan.cut_every == 0) or per_key <= plan.cut_first:
                counts.injected_cuts += 1
                return "cut"
            return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        fault = self._decide(self._object_key(handler))
        if fault in ("503", "403"):
            payload = SLOW_DOWN_XML if fault == "503" else ACCESS_DENIED_XML
            handler.send_response(503 if fault == "503" else 403)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            status, reason = resp.status, resp.reason
        finally:
            conn.close()
        handler.send_response(status, reason)
        for k, v in resp_headers:
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if fault == "cut":
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.wfile.write(data)


@pytest.fixture
def fault_proxy(moto_s3: MotoS3) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of the moto server, with no faults planned until the test sets one."""
    proxy = FaultProxy(moto_s3.host, moto_s3.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
