"""CellResDM: brightfield to Cell Painting by residual diffusion, from raw gallery plates to the paper's figures."""

__version__ = "0.1.0"
