"""Reading image files the same way everywhere: ingest checks them, the embedding pass decodes them, the app shows them.

Why one module: a photo that ingest calls readable must decode identically in the embedding pass, and every odd file
(truncated JPEG, CMYK, 16-bit PNG, EXIF-rotated phone photo, decompression bomb) must fail or convert in one place with
one wording. Pillow only: no torch here.

Example:
    >>> rgb = read_rgb("photos/ana/1.jpg")          # HxWx3 uint8, EXIF orientation applied
    >>> width, height = check_image("photos/ana/1.jpg")
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from labels.cli import UserError

# Larger images are refused before decoding: a 100 MP photo of one face is a bomb or a mistake, not training data.
MAX_PIXELS = 64_000_000

# The photo formats Pillow decodes without plugins (GIF and multi-page TIFF: the first frame). AVIF only where this
# Pillow was built with it.
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm",
    ".pnm",
) + ((".avif",) if features.check("avif") else ())

# Photo formats people have that Pillow cannot read here: named with the reason and what to do, never skipped quietly.
_HEIF = ("HEIC/HEIF (iPhone photos) needs the pillow-heif plugin, which this tool does not load; convert them to JPEG,"
         " e.g. `heif-convert IMG.heic IMG.jpg` or `magick mogrify -format jpg *.heic`")
_RAW = "a camera RAW file: develop it to JPEG or PNG first (e.g. with darktable or `dcraw -c -w`)"
UNSUPPORTED_FORMATS = {
    ".heic": _HEIF, ".heif": _HEIF, ".hif": _HEIF,
    ".avif": "AVIF: this Pillow was built without AVIF support; convert to JPEG or PNG",
    ".jxl": "JPEG XL: Pillow cannot read it; convert to JPEG or PNG",
    ".svg": "a vector drawing, not a photo",
    **{ext: _RAW for ext in (".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2", ".pef", ".srw")},
}


class ImageError(UserError):
    """The file is not a usable image; `reason` is short and stable, so summaries can group by it."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _open(path: str | Path, max_pixels: int) -> Image.Image:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except UnidentifiedImageError as exc:
        raise ImageError(path, "not an image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, "too large (decompression bomb)") from exc
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if im.width * im.height > max_pixels:
        im.close()
        raise ImageError(path, f"too large ({im.width}x{im.height} pixels, limit {max_pixels:,})")
    return im


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Convert any mode Pillow decodes to 8-bit RGB; transparency is flattened onto black (like the alignment border)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        a = np.asarray(im, dtype=np.uint16)
        rgb = (a[:, :, :3] * a[:, :, 3:4] + 127) // 255
        return rgb.astype(np.uint8)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def read_rgb(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a photo to an HxWx3 uint8 RGB array with its EXIF orientation applied.

    Raises ImageError (never another exception type for a bad file) with a short reason.
    """
    im = _open(path, max_pixels)
    try:
        with im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return np.ascontiguousarray(_to_rgb(im))
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text:
            raise ImageError(path, "truncated or corrupt image data") from exc
        raise ImageError(path, f"corrupt image ({text or type(exc).__name__})") from exc


def check_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Fully decode the file (so truncation is caught) and return (width, height) after EXIF orientation."""
    rgb = read_rgb(path, max_pixels=max_pixels)
    return rgb.shape[1], rgb.shape[0]


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the file's header without decoding it: cheap enough to ask of
    hundreds of photos (the embedding pass learns where faces sit in a dataset's photos this way). Raises ImageError
    for a file Pillow cannot open."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn the photo by 90 degrees
                width, height = height, width
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"cannot read the image header ({exc})") from exc
    return width, height


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def name_problem(name: str) -> str | None:
    """Why a file name is not taken for a photo (its extension), or None when it is: the reason ingest lists."""
    if is_image_name(name):
        return None
    suffix = Path(name).suffix.lower()
    if suffix in UNSUPPORTED_FORMATS:
        return f"unsupported image format {suffix}: {UNSUPPORTED_FORMATS[suffix]}"
    what = f"extension {suffix}" if suffix else "no extension"
    return f"not a photo file name ({what}; photos end in .jpg, .png, .webp, .bmp, .tif, .gif, ...)"
