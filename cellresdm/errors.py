"""Errors that reach the user: each message names the file, plate or config key at fault."""


class CellResDMError(Exception):
    """Base class of every error the pipeline raises on bad input or configuration."""


class ConfigError(CellResDMError):
    """A config value is missing, unknown or invalid; the message names the key."""


class GalleryError(CellResDMError):
    """A plate, load_data.csv or image is absent from the gallery or cannot be fetched."""


class ImageError(CellResDMError):
    """An image file is unreadable, truncated, or has the wrong shape or dtype; the message names the file."""


class IlluminationError(ImageError):
    """An illumination function is missing, unreadable, not positive and finite, or does not fit the images."""
