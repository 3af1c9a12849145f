"""On-disk caches of the embedding pass: aligned crops, alignment outcomes, embeddings, all keyed by content hash.

Why: aligning and embedding a million photos takes hours; a second run, the review app (which shows the crops as
thumbnails) and a run resumed after a crash must reuse what was computed. Keys are the sha256 of the file's bytes, so a
renamed photo keeps its results and an edited one gets new ones.

Layout under `cache_dir` (WORK/cache in the work folder):

    crops/<align_id>/<key[:2]>/<key>.png       aligned RGB crops in the embedder's geometry (ArcFace 112x112, dlib
                                               150x150; lossless, so a crop read back embeds exactly like the fresh one)
    crops/<align_id>/outcomes/shard-*.npy      one record per photo: method, landmarks, box, problem ("no_face: ...")
    embeddings/<cache_id>/shard-*.npy          one record per photo: L2-normalised embedding (float16) + its norm

Records live in append-only shards (`ShardStore`), never one file per photo: each shard is a structured `.npy` written
to a temporary file, fsync'ed and renamed into place, so a run killed with SIGKILL at any moment leaves only whole
shards (what was still buffered is recomputed on the next run; `flush_seconds` bounds that loss). Shards are
memory-mapped and indexed by a sorted key array, so a lookup over millions of keys is a vectorised `searchsorted`, not a
dict of strings.
Many small shards (one per checkpoint of a slow run) are merged when a writer opens or closes the store.

Example:
    >>> store = ShardStore(folder, embedding_dtype(512))
    >>> found, records = store.lookup(keys)          # bool [N], structured records [N] (zeros where not found)
    >>> store.add(new_records); store.close()        # buffered, written as whole shards
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from labels.cli import UserError
from labels.files import atomic_write, fsync_dir

try:  # POSIX advisory locks keep a merge and a concurrent reader from missing each other's shards
    import fcntl
except ImportError:  # pragma: no cover - Windows: merging is then only safe with one process per cache
    fcntl = None

KEY_BYTES = 64
PROBLEM_BYTES = 200
_KEY_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{1,63}$")

# Alignment methods as stored (index 0 = no crop).
METHOD_CODES = ("", "detected", "center_crop", "pre-aligned")


class CacheError(UserError):
    """A cache folder holds something this code cannot use (another dimension, a foreign file): names the path."""


def check_key(key: str) -> str:
    """Content keys name files (`<key[:2]>/<key>.png`), so they must be short and filename-safe (a sha256 hex is)."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"bad cache key {key!r}: expected 2-64 characters of [0-9A-Za-z_.-], e.g. a sha256 hex digest")
    return key


# ---------------------------------------------------------------------------------------------------------------- crops


def crop_path(cache_dir: str | Path, align_id: str, key: str) -> Path:
    """Where the aligned crop of the photo with content key `key` is (or would be) cached."""
    check_key(key)
    return Path(cache_dir) / "crops" / align_id / key[:2] / f"{key}.png"


def write_crop(path: Path, crop: np.ndarray) -> None:
    """Write an RGB crop as PNG atomically (temp file + rename): a killed run leaves the old file or the new one.

    Not fsync'ed (one fsync per photo would dominate the pass); after a power cut a damaged PNG reads as missing
    (`read_crop` returns None) and is simply made again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(crop[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise CacheError(f"{path}: could not encode the crop as PNG")
    atomic_write(path, data.tobytes(), durable=False)


def read_crop(path: Path) -> np.ndarray | None:
    """A cached crop as uint8 [H, W, 3] RGB, or None when it is missing or damaged (the caller re-aligns)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])


# -------------------------------------------------------------------------------------------------------------- records


def alignment_dtype() -> np.dtype:
    """Record of one alignment outcome (see `embeddings.align.AlignResult`)."""
    return np.dtype(
        [
            ("key", f"S{KEY_BYTES}"),
            ("method", "u1"),
            ("points", "<f4", (5, 2)),
            ("box", "<f4", (4,)),
            ("problem", f"S{PROBLEM_BYTES}"),
        ]
    )


def embedding_dtype(dim: int, precision: str = "float16") -> np.dtype:
    """Record of one embedding: unit vector (float16: half the disk, cosines to ~1e-3) + pre-normalisation norm."""
    return np.dtype([("key", f"S{KEY_BYTES}"), ("emb", np.dtype(precision).newbyteorder("<"), (dim,)), ("norm", "<f4")])


def encode_problem(problem: str | None) -> bytes:
    """UTF-8, cut at PROBLEM_BYTES without splitting a character."""
    return (problem or "").encode("utf-8")[:PROBLEM_BYTES].decode("utf-8", "ignore").encode("utf-8")


def alignment_store(cache_dir: str | Path, align_id: str, **kwargs) -> ShardStore:
    """Alignment outcomes; of two records of a photo (a no-face verdict, then its centre-crop fallback) the one with a
    crop wins (method codes: 0 = no crop)."""
    return ShardStore(Path(cache_dir) / "crops" / align_id / "outcomes", alignment_dtype(), prefer="method", **kwargs)


def embedding_store(cache_dir: str | Path, cache_id: str, dim: int, **kwargs) -> ShardStore:
    return ShardStore(Path(cache_dir) / "embeddings" / cache_id, embedding_dtype(dim), **kwargs)


# --------------------------------------------------------------------------------------------------------- shard store


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save to exactly `path` (np.save given a name adds `.npy`, which would miss atomic_write's temporary)."""
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _dtype_text(dtype: np.dtype) -> str:
    return json.dumps(np.lib.format.dtype_to_descr(dtype))


class ShardStore:
    """Append-only records keyed by a content key, stored as whole `.npy` shards (see the module docstring).

    folder: the store's folder (created on first write). dtype: a structured dtype whose first field is `key`.
    flush_rows / flush_seconds: buffered records are written as a shard when either is reached (and on `flush`/`close`).
    merge_at / merge_rows: when a writer opens or closes the store, or has written merge_at shards, it merges the
    shards smaller than merge_rows (once there are merge_at of them) into shards of up to merge_at * merge_rows.
    A key added twice keeps one record: the one with the largest `prefer` field (the alignment store prefers a record
    with a crop, e.g. a centre-crop fallback made after a no-face verdict, to the verdict), or any one when prefer is
    None (the records of one key are then equal by construction: same bytes, same model).
    """

    def __init__(
        self,
        folder: str | Path,
        dtype: np.dtype,
        *,
        flush_rows: int = 4096,
        flush_seconds: float = 30.0,
        merge_at: int = 16,
        merge_rows: int = 4096,
        prefer: str | None = None,
    ):
        if dtype.names is None or dtype.names[0] != "key":
            raise ValueError("a ShardStore dtype must be structured with 'key' as its first field")
        self.folder = Path(folder)
        self.dtype = dtype
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.merge_at = merge_at
        self.merge_rows = merge_rows
        self.prefer = prefer
        self._written = 0  # shards written since the last merge
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._last_flush = time.monotonic()
        self._wrote = False
        self.refresh()

    # -- reading

    def refresh(self) -> None:
        """(Re)build the index from the shards on disk; call after another process may have written."""
        with self._lock(exclusive=False):
            names = sorted(self.folder.glob("shard-*.npy")) if self.folder.is_dir() else []
            self._shards = [a for a in map(self._load, names) if a is not None]
        keys = [s["key"] for s in self._shards]
        if keys:
            all_keys = np.concatenate(keys)
            shard = np.concatenate([np.full(len(k), i, np.int32) for i, k in enumerate(keys)])
            row = np.concatenate([np.arange(len(k), dtype=np.int64) for k in keys])
            order = self._order(all_keys, self._shards)
            self._keys, self._shard, self._row = all_keys[order], shard[order], row[order]
        else:
            self._keys = np.zeros(0, f"S{KEY_BYTES}")
            self._shard = np.zeros(0, np.int32)
            self._row = np.zeros(0, np.int64)

    def _order(self, keys: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
        """Sort order by key, and within a key by the `prefer` field: the preferred record of a key comes last."""
        if self.prefer is None:
            return np.argsort(keys, kind="stable")
        return np.lexsort((np.concatenate([p[self.prefer] for p in parts]), keys))

    def _load(self, path: Path) -> np.ndarray | None:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None  # merged away by another process between the listing and now
        except (ValueError, OSError, EOFError) as exc:
            warnings.warn(f"{path}: unreadable cache shard ignored, its records will be recomputed ({exc})",
                          stacklevel=3)
            return None
        if arr.dtype != self.dtype or arr.ndim != 1:
            raise CacheError(
                f"{path}: cache shard holds records of another layout ({arr.dtype}, expected {self.dtype});"
                " delete the folder or use another cache id"
            )
        return arr

    def __len__(self) -> int:
        """Number of distinct keys stored (written shards only, not the unflushed buffer)."""
        return int(np.unique(self._keys).size) if self._keys.size else 0

    def contains(self, keys: Sequence[str]) -> np.ndarray:
        """bool [N]: which keys have a record in the written shards (no record is read)."""
        return self._find(keys)[0]

    def _find(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        want = np.array([k.encode("ascii") for k in keys], dtype=f"S{KEY_BYTES}")
        if not self._keys.size or not want.size:
            return np.zeros(len(want), bool), want, np.zeros(len(want), np.int64)
        pos = np.maximum(np.searchsorted(self._keys, want, side="right") - 1, 0)  # the last, preferred record
        return self._keys[pos] == want, want, pos

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found bool [N], records [N] of self.dtype: zero-filled where not found) for the written shards."""
        found, want, pos = self._find(keys)
        out = np.zeros(len(want), self.dtype)
        idx = np.flatnonzero(found)
        shards, rows = self._shard[pos[idx]], self._row[pos[idx]]
        for s in np.unique(shards):
            sel = shards == s
            out[idx[sel]] = self._shards[s][rows[sel]]
        return found, out

    # -- writing

    def add(self, records: np.ndarray) -> None:
        """Buffer records (of self.dtype); written as a shard once flush_rows or flush_seconds is reached."""
        if records.dtype != self.dtype:
            raise ValueError(f"records of dtype {records.dtype} added to a store of {self.dtype}")
        if not self._wrote:
            self._wrote = True
            self._merge_small()
        if len(records):
            self._buffer.append(np.array(records, copy=True))
            self._buffered += len(records)
        if self._buffered >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffer as one shard: temp file, fsync, atomic rename, fsync of the folder."""
        self._last_flush = time.monotonic()
        if not self._buffered:
            return
        self._write_shard(np.concatenate(self._buffer))
        self._buffer, self._buffered = [], 0
        self._written += 1
        if self._written >= self.merge_at:  # a long run with a short flush window: keep the shard count bounded
            self._merge_small(refresh=False)

    def close(self) -> None:
        """Flush, then merge small shards if this store wrote any (so slow runs do not leave thousands of files)."""
        self.flush()
        if self._wrote:
            self._merge_small()
        self.refresh()

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_shard(self, records: np.ndarray) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        layout = self.folder / "layout.json"
        if not layout.exists():
            atomic_write(layout, _dtype_text(self.dtype) + "\n")
        elif layout.read_text().strip() != _dtype_text(self.dtype):
            raise CacheError(f"{layout}: this cache folder holds records of another layout; use another cache id")
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npy"
        return atomic_write(self.folder / name, lambda tmp: save_npy(tmp, records))

    def _merge_small(self, refresh: bool = True) -> None:
        """Merge shards smaller than merge_rows, deduplicated; the old shards go only once the merged one is durable.

        refresh=False during a run: the writer does not read its own index, and rebuilding it would cost a sort over
        every stored key at each merge."""
        self._written = 0
        if not self.folder.is_dir():
            return
        with self._lock(exclusive=True):
            small = []
            for path in sorted(self.folder.glob("shard-*.npy")):
                arr = self._load(path)
                if arr is not None and len(arr) < self.merge_rows:
                    small.append((path, arr))
            if len(small) < self.merge_at:
                return
            # Groups of up to merge_at * flush_rows records, so that a merge never holds a whole huge cache in memory.
            groups, rows = [[]], 0
            for item in small:
                if rows >= self.merge_at * self.merge_rows:
                    groups.append([])
                    rows = 0
                groups[-1].append(item)
                rows += len(item[1])
            for group in groups:
                parts = [arr for _, arr in group]
                merged = np.concatenate(parts)
                merged = merged[self._order(merged["key"], parts)]
                last = np.append(merged["key"][1:] != merged["key"][:-1], True)  # each key's preferred record
                self._write_shard(merged[last])
                for path, _ in group:
                    with contextlib.suppress(OSError):  # a leftover only duplicates records, which lookups tolerate
                        path.unlink()
            fsync_dir(self.folder)
            self._remove_stale_temps()
        if refresh:
            self.refresh()

    def _remove_stale_temps(self, age_seconds: float = 3600.0) -> None:
        """Temp files of killed writers (older than an hour, so a live writer's file is never touched)."""
        now = time.time()
        for tmp in self.folder.glob(".shard-*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > age_seconds:
                    tmp.unlink()

    @contextlib.contextmanager
    def _lock(self, exclusive: bool) -> Iterator[None]:
        if fcntl is None or not self.folder.is_dir():
            yield
            return
        with open(self.folder / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
