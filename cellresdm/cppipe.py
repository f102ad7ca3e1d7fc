"""CellProfiler 4.2.8.1 pipeline text (``.cppipe``) of the ground-truth and the feature stages.

:func:`make_groundtruth_pipeline` fills the packaged template ``cppipe/groundtruth.cppipe`` (the segmentation
part of the cpg0000 (CPJUMP1) analysis pipeline); :func:`make_measurement_pipeline` reuses its segmentation
modules and adds the reference pipeline's measurement modules, written with :func:`module`. Sizes in the
settings are pixels at 0.598 um/px and are scaled to the images' pixel size (:func:`px`).

The ground-truth template's LoadData note still names ``cellresdm.groundtruth.make_pipeline`` (now
:func:`make_groundtruth_pipeline`): it is kept verbatim so that the pipeline text stays the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from string import Template
from typing import TYPE_CHECKING

from cellresdm import layout
from cellresdm.errors import CellResDMError

if TYPE_CHECKING:  # the settings modules import this one
    from cellresdm.features.settings import FeatureSettings
    from cellresdm.groundtruth import GroundTruthSettings

#: Compartments (CellProfiler object names) the feature pipeline identifies and measures per object.
COMPARTMENTS: tuple[str, ...] = ("Nuclei", "Cells", "Cytoplasm")
_HEADER = (
    "{name}:[module_num:{num}|svn_version:'Unknown'|variable_revision_number:{rev}|show_window:False|"
    "notes:[{notes}]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]"
)


def yes(flag: bool) -> str:
    """A CellProfiler Yes/No setting."""
    return "Yes" if flag else "No"


def px(value: float, scale: float, minimum: int = 1) -> int:
    """A size in reference pixels as whole image pixels (at least ``minimum``)."""
    return max(int(round(value * scale)), minimum)


def num(value: float) -> str:
    """A number setting, 6 significant digits."""
    return f"{value:.6g}"


def module(name: str, rev: int, settings: Sequence[tuple[str, object]], notes: str = "") -> str:
    """One module's text; its number stays the placeholder ``{num}`` until the pipeline is assembled."""
    head = _HEADER.format(name=name, num="{num}", rev=rev, notes=repr(notes) if notes else "")
    return "\n".join([head, *(f"    {k}:{v}" for k, v in settings)])


# ----------------------------------------------------------------------------------------------- ground truth


def make_groundtruth_pipeline(settings: GroundTruthSettings) -> str:
    """The ``.cppipe`` text of the ground-truth pipeline for ``settings`` (sizes scaled to the pixel size).

    LoadData reads a CSV (given with ``--data-file``) with ``FileName_/PathName_OrigDNA``,
    ``FileName_/PathName_OrigRNA`` and ``Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_field``;
    intensities are rescaled to [0, 1]. SaveImages writes ``{field}_nuclei.tiff`` and ``{field}_cells.tiff``
    (16-bit label images) into the output folder.
    """
    s = settings.scale
    dmin, dmax = settings.nuclei_diameter
    values = {
        "bg_block_size": px(settings.background_block_size, s),
        "bg_filter_size": px(settings.background_filter_size, s),
        "nuclei_diameter_min": px(dmin, s),
        "nuclei_diameter_max": max(px(dmax, s), px(dmin, s) + 1),
        "discard_outside_diameter": yes(settings.discard_outside_diameter),
        "discard_border_nuclei": yes(settings.discard_border_nuclei),
        "declump_method": settings.declump_method,
        "dividing_lines_method": settings.dividing_lines_method,
        "declump_smoothing_filter": px(settings.declump_smoothing_filter, s),
        "maxima_min_distance": num(settings.maxima_min_distance * s),
        "low_res_maxima": yes(settings.low_res_maxima),
        "nuclei_fill_holes": settings.nuclei_fill_holes,
        "nuclei_threshold_method": settings.nuclei_threshold_method,
        "nuclei_threshold_smoothing": num(settings.nuclei_threshold_smoothing * s),
        "nuclei_threshold_correction": num(settings.nuclei_threshold_correction),
        "nuclei_threshold_lower": num(settings.nuclei_threshold_bounds[0]),
        "nuclei_threshold_upper": num(settings.nuclei_threshold_bounds[1]),
        "nuclei_otsu_classes": settings.nuclei_otsu_classes,
        "nuclei_otsu_middle": settings.nuclei_otsu_middle,
        "adaptive_window": px(settings.adaptive_window, s),
        "cells_method": settings.cells_method,
        "cells_distance": px(settings.cells_distance, s, minimum=0),
        "cells_regularization": num(settings.cells_regularization),
        "cells_fill_holes": yes(settings.cells_fill_holes),
        "cells_threshold_method": settings.cells_threshold_method,
        "cells_threshold_smoothing": num(settings.cells_threshold_smoothing * s),
        "cells_threshold_correction": num(settings.cells_threshold_correction),
        "cells_threshold_lower": num(settings.cells_threshold_bounds[0]),
        "cells_threshold_upper": num(settings.cells_threshold_bounds[1]),
        "cells_otsu_classes": settings.cells_otsu_classes,
        "cells_otsu_middle": settings.cells_otsu_middle,
    }
    template = resources.files("cellresdm").joinpath("cppipe/groundtruth.cppipe").read_text()
    return Template(template).substitute(values)


# ----------------------------------------------------------------------------------------------- features


#: The channels the segmentation modules of the feature pipeline read (all a segmentation-only run loads).
SEGMENTATION_CHANNELS: tuple[str, ...] = ("DNA", "RNA")


def _segmentation_modules(settings: GroundTruthSettings) -> list[str]:
    """Background subtraction of DNA, nuclei and cells from the ground-truth pipeline, reading DNA and RNA."""
    blocks = [
        b for b in re.split(r"\n\s*\n", make_groundtruth_pipeline(settings)) if re.match(r"^\w+:\[module_num:", b)
    ]
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
    convert = module(
        "ConvertObjectsToImage",
        1,
        [
            ("Select the input objects", obj),
            ("Name the output image", f"{obj}LabelImage"),
            ("Select the color format", "uint16"),
            ("Select the colormap", "Default"),
        ],
    )
    save = module(
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
    return module(
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
    scales = [px(v, s) for v in settings.texture_scales]
    return [
        module(
            "MeasureColocalization",
            5,
            [
                ("Select images to measure", images),
                (
                    "Set threshold as percentage of maximum intensity for the images",
                    num(settings.colocalization_threshold),
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
        module(
            "MeasureGranularity",
            4,
            [
                ("Select images to measure", images),
                ("Measure within objects?", "Yes"),
                ("Select objects to measure", objects),
                ("Subsampling factor for granularity measurements", num(settings.granularity_subsample)),
                ("Subsampling factor for background reduction", num(settings.granularity_background_subsample)),
                ("Radius of structuring element", px(settings.granularity_radius, s)),
                ("Range of the granular spectrum", settings.granularity_range),
            ],
        ),
        module(
            "MeasureObjectIntensity",
            4,
            [("Select images to measure", images), ("Select objects to measure", objects)],
        ),
        _neighbors("Cells", "Within a specified distance", px(settings.neighbor_distance_cells, s)),
        _neighbors("Nuclei", "Within a specified distance", px(settings.neighbor_distance_nuclei, s)),
        _neighbors("Cells", "Adjacent", px(settings.neighbor_distance_cells, s)),
        module(
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
                ("Maximum radius", px(settings.radial_max_radius, s)),
            ],
        ),
        module(
            "MeasureObjectSizeShape",
            3,
            [
                ("Select object sets to measure", objects),
                ("Calculate the Zernike features?", yes(settings.zernike)),
                ("Calculate the advanced features?", "No"),
            ],
        ),
        module(
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
        module(
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
    return module(
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
    ``Cytoplasm.csv``). ``measure=False`` gives the segmentation-only pipeline of the fast and cp_measure
    backends (it still exports ``Image.csv`` for the counts); it reads only :data:`SEGMENTATION_CHANNELS`, the
    only ones its CSV needs to list.
    """
    load = module(
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
        # verbatim, so the pipeline text stays the same (cellresdm.features re-exports this function)
        notes="cellresdm features: measurement part of the cpg0000 (CPJUMP1) analysis pipeline, "
        "generated by cellresdm.features.make_measurement_pipeline.",
    )
    tertiary = module(
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
