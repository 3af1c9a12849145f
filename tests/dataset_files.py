"""Small datasets on disk for the ingest and export tests: real photos from ../shared plus deliberately bad files.

Every expectation is computed here independently of labels/ (hashlib for sha256, Pillow's header for sizes), so the
tests compare the product against something it did not produce.
"""
from __future__ import annotations

import hashlib
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

LFW = ("Al_Gore", "Colin_Powell")
GLINT = ("Tom Hanks", "Will Smith")  # folder names with spaces
ACCENTED = "José Ñúñez"  # a non-ASCII identity, photos renamed to non-ASCII names with spaces


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_photos(lfw: Path, glint: Path, data: Path, per_identity: int = 4) -> dict[str, str]:
    """Copy real photos into DATA/<identity>/; returns rel_path -> identity."""
    found = {}
    for src_root, names in ((lfw, LFW), (glint, GLINT)):
        for name in names:
            for photo in sorted((src_root / name).iterdir())[:per_identity]:
                _copy(photo, data / name / photo.name)
                found[f"{name}/{photo.name}"] = name
    for k, photo in enumerate(sorted((lfw / "George_W_Bush").iterdir())[:3]):
        rel = f"{ACCENTED}/фото {k}.jpg"
        _copy(photo, data / rel)
        found[rel] = ACCENTED
    return found


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (what a decompression bomb looks like before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def build_odd_files(photo: Path, folder: Path) -> dict[str, tuple[str, object]]:
    """Write awkward files made from one real JPEG into `folder`.

    Returns name -> ("ok", (width, height)) for files that must be read (converted) or ("bad", reason) for files that
    must be refused, with the reason labels.imagefile gives.
    """
    folder.mkdir(parents=True, exist_ok=True)
    src = Image.open(photo).convert("RGB")
    raw = photo.read_bytes()
    out: dict[str, tuple[str, object]] = {}

    (folder / "zero.jpg").write_bytes(b"")
    out["zero.jpg"] = ("bad", "empty file (0 bytes)")
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    out["truncated.jpg"] = ("bad", "truncated or corrupt image data")
    (folder / "text.jpg").write_text("this is a text file, not a photo\n")
    out["text.jpg"] = ("bad", "not an image")
    (folder / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    out["bomb.png"] = ("bad", "too large (decompression bomb)")

    src.convert("CMYK").save(folder / "cmyk.jpg")
    src.convert("L").save(folder / "gray.jpg")
    rgba = src.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    deep = (np.asarray(src.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    for name in ("cmyk.jpg", "gray.jpg", "rgba.png", "deep16.png"):
        with Image.open(folder / name) as im:
            out[name] = ("ok", im.size)
    with Image.open(folder / "deep16.png") as im:
        assert im.mode.startswith("I"), im.mode  # really a 16-bit PNG, not silently 8-bit

    wide = src.crop((0, 0, src.width, src.height * 2 // 3))  # wider than tall
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown taller than wide
    wide.save(folder / "rotated.jpg", exif=exif)
    out["rotated.jpg"] = ("ok", (wide.height, wide.width))
    return out
