"""The demo's photos: LFW, downloaded once with its checksum verified, or any local folder of identity folders.

Why real download code: the README's main command must show the tool on real faces on a fresh machine with nothing but
network access, and a 180 MB download must never be trusted half-written or tampered with. So the file is streamed to
`<name>.part`, hashed on the way, compared with the published sha256, and only then renamed into the cache; a second
run finds the verified file (and its extracted folder) and downloads nothing. Extraction keeps to the cache folder
(`tarfile`'s "data" filter refuses absolute paths, `..`, links out and device files).

Example:
    >>> root = fetch_lfw()               # ~/.cache/facecur/lfw/lfw/<Person_Name>/<Person_Name>_0001.jpg
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from labels.cli import UserError
from labels.files import file_sha256

# The original lfw.tgz (13,233 photos of 5,749 people, 250x250) on the figshare mirror that scikit-learn's
# `sklearn/datasets/_lfw.py` downloads (ARCHIVE: url and sha256 checksum); 180,566,744 bytes. The UMass page
# (http://vis-www.cs.umass.edu/lfw/) is the original source of the same archive.
LFW_URL = "https://ndownloader.figshare.com/files/5976018"
LFW_SHA256 = "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0"


class DownloadError(UserError):
    """The file could not be fetched or failed verification; the message says which and why."""


def default_cache_dir() -> Path:
    """$FACECUR_CACHE, else $XDG_CACHE_HOME/facecur, else ~/.cache/facecur."""
    if os.environ.get("FACECUR_CACHE"):
        return Path(os.environ["FACECUR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "facecur"


def download(url: str, dest: str | Path, sha256: str, *, timeout: float = 30.0, progress: bool = True) -> Path:
    """Fetch `url` to `dest` unless a file with the right sha256 is already there; refuse a wrong checksum.

    Returns dest. Raises DownloadError (offline, HTTP error, checksum mismatch); nothing half-written is left at dest.
    """
    dest = Path(dest)
    if dest.is_file() and file_sha256(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=not progress) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"could not download {url}: {reason}") from exc
    got = h.hexdigest()
    if got != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: checksum mismatch (sha256 {got}, expected {sha256}); the file was discarded")
    part.replace(dest)
    return dest


def extract(tarball: str | Path, out_dir: str | Path) -> Path:
    """Unpack a .tgz into out_dir (once: a `.done` marker records it) and return out_dir."""
    tarball, out_dir = Path(tarball), Path(out_dir)
    marker = out_dir / ".done"
    if marker.is_file():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(tarball, "r:*") as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"{tarball}: cannot unpack ({exc})") from exc
    (tmp / ".done").write_text("ok\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return out_dir


def identity_root(folder: Path) -> Path:
    """The folder of identity folders inside an unpacked archive (lfw.tgz holds one top folder, `lfw/`)."""
    subdirs = [p for p in folder.iterdir() if p.is_dir()]
    return subdirs[0] if len(subdirs) == 1 and not any(p.is_file() for p in subdirs[0].iterdir()) else folder


def fetch_lfw(cache_dir: str | Path | None = None, *, url: str | None = None, sha256: str | None = None,
              progress: bool = True) -> Path:
    """Download (first use) and unpack LFW into the cache; returns the folder of identity folders."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    tarball = download(url or LFW_URL, cache / "lfw.tgz", sha256 or LFW_SHA256, progress=progress)
    return identity_root(extract(tarball, cache / "lfw"))
