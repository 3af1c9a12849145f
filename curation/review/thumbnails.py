"""Thumbnails: the aligned crop or the original photo of an image, served only from inside the allowed roots.

Why by image id and allowed roots: a request never carries a path, so no URL can make the app read a file elsewhere.
"""
from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from curation.workfolder import WorkFolder
from embeddings import cache
from labels.imagefile import ImageError, read_rgb
from labels.store import LabelStore, StoreError


@dataclass(frozen=True)
class Thumbnail:
    """Encoded image bytes ready for st.image; `reason` says why a placeholder was drawn instead of the photo."""

    data: bytes
    reason: str | None = None


def crop_align_id(report: dict) -> str | None:
    """The alignment id of the last clean's cached crops (WORK/cache/crops/<align_id>/), as its report names it."""
    value = report.get("align_id")
    return value if isinstance(value, str) and value and "/" not in value and value not in (".", "..") else None


def photo_source(
    store: LabelStore, work: WorkFolder, photo: pd.Series | dict, align_id: str | None = None
) -> tuple[Path | None, str | None]:
    """Which file to show for a photo: its aligned crop when the last clean cached one, else the original.

    `photo` is a row of `IdentityView.photos` (path, sha256). Returns (path, None) or (None, reason); the path is built
    from the store (the crop cache's content key, or the ingested path resolved inside the dataset root), never taken
    from a request.
    """
    sha = photo.get("sha256")
    if align_id and isinstance(sha, str) and sha:
        crop = cache.crop_path(work.root / "cache", align_id, sha)
        if crop.is_file():
            return crop, None
    try:
        return store.resolve(photo["path"]), None
    except StoreError as exc:
        return None, str(exc)


def allowed_roots(store: LabelStore, work: WorkFolder) -> tuple[Path, ...]:
    """The only folders images are served from: the work folder and the dataset root (when something was ingested)."""
    roots = [work.root]
    try:
        roots.append(store.dataset_root.resolve())
    except StoreError:
        pass
    return tuple(roots)


def load_thumbnail(path: Path | str, roots: Sequence[Path], *, size: int = 160) -> Thumbnail:
    """A JPEG thumbnail (at most size x size) of a photo inside one of `roots`, or a placeholder naming the reason.

    Never raises for a bad file: missing, unreadable, not an image, outside the allowed folders all give a placeholder.
    Decoding goes through labels.imagefile.read_rgb, so the app agrees with ingest on what is readable.
    """
    full = Path(path).resolve()
    if not any(full.is_relative_to(r) for r in roots):
        return placeholder("outside the dataset and work folder", size)
    try:
        rgb = read_rgb(full)
    except ImageError as exc:
        return placeholder(exc.reason, size)
    im = Image.fromarray(rgb)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return Thumbnail(buf.getvalue())


def placeholder(reason: str, size: int = 160) -> Thumbnail:
    """A grey square with the reason written on it, for photos that cannot be shown."""
    im = Image.new("RGB", (size, size), (70, 70, 70))
    draw = ImageDraw.Draw(im)
    lines = textwrap.wrap(reason, width=max(8, size // 7))[:6]
    draw.multiline_text((6, 6), "\n".join(["cannot show:", *lines]), fill=(235, 235, 235), spacing=3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return Thumbnail(buf.getvalue(), reason)
