"""Names and paths of the Cell Painting Gallery, cpg0000 (CPJUMP1), as checked in docs/design.md section 3.

Everything that knows how the gallery spells a plate, a field or a channel lives here, so the synthetic
gallery, the downloader and the dataset builder cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BUCKET = "cellpainting-gallery"
PROJECT = "cpg0000-jump-pilot"
SOURCE = "source_4"
BATCH = "2020_11_04_CPJUMP1"

#: Fluorescence channels in the order used by datasets and models: (name, gallery channel number).
IF_CHANNELS: tuple[str, ...] = ("DNA", "RNA", "ER", "AGP", "Mito")
#: Brightfield planes, in-focus first: the model's y0 puts plane 0 under the IF channels (docs/design.md section 4).
BF_CHANNELS: tuple[str, ...] = ("Brightfield", "HighZBF", "LowZBF")
ALL_CHANNELS: tuple[str, ...] = IF_CHANNELS + BF_CHANNELS
#: Gallery channel number (the ``chK`` of the file name) of every channel.
CHANNEL_NUMBER: dict[str, int] = {
    "Mito": 1,
    "AGP": 2,
    "RNA": 3,
    "ER": 4,
    "DNA": 5,
    "HighZBF": 6,
    "LowZBF": 7,
    "Brightfield": 8,
}
#: Object channels of ground truth, boundaries and labels, in order.
OBJECT_CHANNELS: tuple[str, ...] = ("nuclei", "cells")

PLATE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
WELL_PATTERN = re.compile(r"^([A-P])(\d{2})$")
FIELD_FILE_PATTERN = re.compile(r"^r(\d{2})c(\d{2})f(\d{2})p(\d{2})-ch(\d)sk1fk1fl1\.tiff$")

N_ROWS = 16  # 384-well plate: rows A-P
N_COLS = 24


def url_column(channel: str) -> str:
    """load_data.csv column holding the s3:// URL of ``channel`` (e.g. ``URL_OrigDNA``)."""
    return f"URL_Orig{channel}"


def filename_column(channel: str) -> str:
    return f"FileName_Orig{channel}"


def pathname_column(channel: str) -> str:
    return f"PathName_Orig{channel}"


def path_column(channel: str) -> str:
    """Column of ``raw/{plate}/load_data.parquet`` holding the local path of ``channel``."""
    return f"path_{channel}"


def illum_column(channel: str) -> str:
    """Column of ``raw/{plate}/load_data.parquet`` holding the local path of ``channel``'s illumination function
    (the same on every row of a plate; None where the plate runs uncorrected), like CellProfiler's LoadData
    ``FileName_Illum{channel}``."""
    return f"illum_{channel}"


def illum_filename(plate: str, channel: str) -> str:
    """Gallery file name of a plate's illumination function: ``BR00116991_IllumDNA.npy``."""
    return f"{plate}_Illum{channel}.npy"


def well_name(row: int, col: int) -> str:
    """1-based row and column to a well name: (1, 1) -> ``A01``."""
    return f"{chr(ord('A') + row - 1)}{col:02d}"


def parse_well(well: str) -> tuple[int, int]:
    """Well name to 1-based (row, col): ``B03`` -> (2, 3)."""
    match = WELL_PATTERN.match(well)
    if not match:
        raise ValueError(f"not a 384-well plate well name: {well!r} (expected e.g. 'A01')")
    return ord(match.group(1)) - ord("A") + 1, int(match.group(2))


def field_id(row: int, col: int, site: int) -> str:
    """Identifier of one field (well and site) used in result file names: ``r02c03f01``."""
    return f"r{row:02d}c{col:02d}f{site:02d}"


def image_filename(row: int, col: int, site: int, channel: str) -> str:
    """Gallery file name of one channel of one field: ``r02c03f01p01-ch5sk1fk1fl1.tiff``."""
    return f"{field_id(row, col, site)}p01-ch{CHANNEL_NUMBER[channel]}sk1fk1fl1.tiff"


@dataclass(frozen=True)
class GalleryLayout:
    """Keys of one batch inside the bucket (relative to the bucket root)."""

    project: str = PROJECT
    source: str = SOURCE
    batch: str = BATCH

    def images_key(self, plate_dir: str) -> str:
        return f"{self.project}/{self.source}/images/{self.batch}/images/{plate_dir}/Images"

    def image_key(self, plate_dir: str, filename: str) -> str:
        return f"{self.images_key(plate_dir)}/{filename}"

    def load_data_key(self, plate: str) -> str:
        return f"{self.project}/{self.source}/workspace/load_data_csv/{self.batch}/{plate}/load_data.csv"

    def illum_prefix(self, plate: str) -> str:
        """Folder of the plate's illumination functions (one ``.npy`` per channel; divide the image by it)."""
        return f"{self.project}/{self.source}/images/{self.batch}/illum/{plate}"

    def illum_key(self, plate: str, channel: str) -> str:
        return f"{self.illum_prefix(plate)}/{illum_filename(plate, channel)}"


def s3_url(key: str, bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/{key}"
