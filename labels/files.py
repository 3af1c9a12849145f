"""Crash-safe file writes and content hashes: the one home of both, used by every package (stdlib only).

Why one home: every output a reader may open while it is being made (the app reads report.json, flags.csv and the
clean arrays while a clean runs; a resumed run reads its last checkpoint) must appear whole or not at all, and every
cache and duplicate check must agree on what "the same file" means. Both are easy to get almost right in eight places.

Example:
    >>> from labels.files import atomic_write, file_sha256, write_json
    >>> write_json(Path("out/report.json"), {"n": 1})               # whole file or the old one, never half
    >>> atomic_write(Path("out/table.csv"), lambda tmp: frame.to_csv(tmp, index=False))
    >>> file_sha256(Path("photo.jpg"))                                # the content key of caches and duplicates
    'e3b0c44298fc1c149afbf4c8996fb924...'
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` survive a power cut (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | Path, content: bytes | str | Callable[[Path], object], *, durable: bool = True
) -> Path:
    """Write `path` so that readers and a killed process only ever see the old file or the whole new one.

    content: the bytes or text to write, or a callback `write(tmp)` that writes a temporary file beside `path` (for
    writers that want a path: pandas, numpy memmaps, torch.save, onnx.save, Pillow with an explicit format).
    durable: fsync the file and its folder before returning (off for caches that a rerun can rebuild, where one fsync
    per file would dominate the run).

    Returns `path`. On any error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            content(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def write_json(path: str | Path, value, *, indent: int | None = 1, **dumps_kwargs) -> Path:
    """`atomic_write` of `json.dumps(value)` plus a final newline (keyword arguments go to `json.dumps`)."""
    return atomic_write(path, json.dumps(value, indent=indent, **dumps_kwargs) + "\n")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of `atomic_write`'s temporaries (left behind only by a power cut or SIGKILL)."""
    return name.startswith(".") and name.endswith(".tmp")


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")


def temp_target(name: str) -> str | None:
    """The file name an `atomic_write` temporary was written for ('.a.json.1f2e3d4c.tmp' -> 'a.json'), else None."""
    match = _TEMP_NAME.match(name)
    return match["name"] if match else None


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes: the content identity of caches, duplicate checks and downloads."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
