"""Binary boundary masks from instance labels (docs/design.md section 5, ground truth)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries


def boundaries_from_labels(labels: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Binary mask of object boundaries of a label image.

    Args:
        labels: (H, W) integer instance labels, 0 = background.
        thickness: boundary width in pixels (>= 1). One-pixel outlines are hard targets for a generator,
            so the default widens them; pixels between touching objects count as boundary.

    Returns:
        (H, W) bool mask.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {labels.shape}")
    if thickness < 1:
        raise ValueError(f"boundary thickness must be >= 1, got {thickness}")
    # 'inner' keeps the outline inside each object, so thickness 1 is exactly one pixel per object.
    edges = find_boundaries(labels, connectivity=1, mode="inner")
    if thickness > 1:
        edges = ndi.binary_dilation(edges, iterations=thickness - 1) & (labels > 0)
    return edges
