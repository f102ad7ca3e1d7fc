"""Every method (and the VQ-GAN) at the smallest size that runs all its code paths: the model sections of the
tiny end-to-end run (tests/test_workflow.py) and of the multi-process training test (tests/test_launch.py)."""

from __future__ import annotations

import copy

METHODS = ["cellresdm", "cellresdm_latent", "unet", "pix2pix", "spade", "palette", "spade_diffusion"]

_SECTIONS = {
    "cellresdm": {"steps": 4, "min_noise_level": 0.2, "model_channels": 16, "channel_mult": [1, 2], "crop_size": 64},
    "cellresdm_latent": {"steps": 4, "min_noise_level": 0.2, "model_channels": 16, "channel_mult": [1, 2]},
    "vqgan": {
        "channels": 8,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "codebook_size": 64,
        "disc_channels": 8,
        "crop_size": 64,
        "disc_start": 3,
    },
    "unet": {"base_channels": 8, "depth": 6, "crop_size": 64},
    "pix2pix": {"base_channels": 8, "depth": 6, "disc_channels": 8, "crop_size": 64},
    "spade": {"base_channels": 8, "n_up": 4, "hidden": 8, "disc_channels": 8, "disc_layers": 3, "crop_size": 64},
    "palette": {"model_channels": 16, "channel_mult": [1, 2], "sample_steps": 3, "crop_size": 64},
    "spade_diffusion": {
        "model_channels": 16,
        "channel_mult": [1, 2],
        "sample_steps": 3,
        "spade_hidden": 8,
        "crop_size": 64,
    },
}


def tiny_method_sections() -> dict[str, dict]:
    """A fresh copy of the tiny config sections of every method and of the VQ-GAN."""
    return copy.deepcopy(_SECTIONS)
