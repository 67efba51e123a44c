"""Opening one picture file: the image extensions a folder is searched for, and :func:`open_image`, which turns
every failure (Pillow's decompression-bomb guard included) into a one-line :class:`~ddpm.data.errors.DataError`."""
from __future__ import annotations

import warnings

from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "open_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def open_image(source, name=None):
    """``PIL.Image.open(source)`` with the image decoded (``load()``); every failure, Pillow's decompression-bomb guard
    included (an image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels), is a one-line :class:`DataError`
    naming ``name`` (default: ``source``).  The caller closes the image."""
    name = source if name is None else name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            try:
                img.load()
            except BaseException:
                img.close()
                raise
        return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        limit = Image.MAX_IMAGE_PIXELS
        raise DataError(f"{name}: the image is larger than Pillow's limit of {limit:,} pixels (a guard against "
                        f"decompression bombs: {str(e).split('could be')[0].strip()}); shrink the image, or raise "
                        "PIL.Image.MAX_IMAGE_PIXELS if you trust it") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else "corrupt"
        raise DataError(f"{name}: cannot read this image ({type(e).__name__}: {reason}); "
                        "delete or replace the file") from None
