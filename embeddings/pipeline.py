"""The embedding pass: photos -> aligned crops -> embeddings, batched, cached and resumable.

Why it is built this way: on a large dataset the pass runs for hours, so it must (1) keep the model busy: DataLoader
worker processes decode (`labels.imagefile.read_rgb`, the same verdict on readability as ingest) and align while the
main process runs the model on whole batches (`torch.inference_mode`; on CUDA pinned memory, non-blocking copies,
mixed precision and channels_last, see `embeddings.embedders`); (2) never redo work: crops, alignment outcomes and
embeddings are cached by content key (`embeddings.cache`), so a second run, a run with another embedder on the same
alignment, and a run resumed after SIGKILL only compute what is missing; (3) never lose a batch to one bad photo: an
unreadable file or a photo without a face gets a status, the rest of its batch is embedded.

Statuses: "ok", "unreadable: <reason>", "no_face: <reason>", "bad_size: <reason>" (--aligned mode). Methods: "detected",
"center_crop" (no detector found the face of a face-crop photo, or found only a face outside the middle third of it, a
bystander's: embedded from where faces sit in the dataset's other photos, a weak alignment; see
`EmbedOptions.face_crops`), "pre-aligned", or "" when there is no crop.

Example:
    >>> embedder = make_embedder("dlib")
    >>> result = embed_images(paths, embedder, cache_dir=Path("WORK/cache"))
    >>> result.embeddings.shape, result.summary()     # ((N, 128), '4870 ok, 8 no_face')
    >>> crop_path(Path("WORK/cache"), result.align_id, result.keys[0])   # the crop the app shows as a thumbnail
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from embeddings.align import ARCFACE, face_crop_points
from embeddings.align import align_id as make_align_id
from embeddings.cache import (
    METHOD_CODES,
    ShardStore,
    alignment_store,
    check_key,
    crop_path,
    embedding_store,
    read_crop,
)
from embeddings.embedders import Embedder
from embeddings.options import ENGINES, EmbedOptions
from embeddings.photo import (
    MODE_ALIGN,
    MODE_FALLBACK,
    MODE_FROM_CACHE,
    OFF_CENTRE,
    PhotoAligner,
    failure_type,
    get_detector,
    single_threaded,
)
from labels.files import file_sha256
from labels.imagefile import ImageError, image_size
from labels.cli import UserError

__all__ = [
    "CropDataset",
    "EmbedOptions",
    "EmbedResult",
    "PassFailure",
    "align_images",
    "crop_path",
    "embed_images",
    "embedding_cache_id",
    "get_detector",
]


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Should not happen (every crop of a run is embedded before the caches close); said plainly if it ever does.
_NO_EMBEDDING = "error: no embedding was stored for this crop (re-run to retry)"


@dataclass
class EmbedResult:
    """Output of `embed_images`, one row per input path, in input order.

    keys: content keys (sha256 of the file bytes unless given; "" when the file could not be read to hash it).
    embeddings: float32 [N, D] L2-normalised; NaN rows where status != "ok". norms: float32 [N], pre-normalisation
    norm (AdaFace's quality signal), NaN where status != "ok". status / method: see the module docstring.
    align_id: names the crop cache folder (`crop_path(cache_dir, align_id, key)`); cache_id: the embedding cache folder.
    aligned_now / embedded_now: photos aligned / crops embedded by this run (the rest came from the caches).
    embed_processes: how many processes embedded them side by side (one per core for dlib; 1 for a model with
    intra-op threads or on a GPU; 0 when nothing was embedded).
    """

    keys: list[str]
    embeddings: np.ndarray
    norms: np.ndarray
    status: list[str]
    method: list[str]
    align_id: str = ""
    cache_id: str = ""
    aligned_now: int = 0
    embedded_now: int = 0
    embed_processes: int = 0

    def counts(self) -> Counter:
        """Photos per status kind ("ok", "no_face", "unreadable", "bad_size", ...)."""
        return Counter(s.split(":", 1)[0] for s in self.status)

    def summary(self) -> str:
        """One line for a person: '4870 ok, 8 no_face (123 aligned, 4878 embedded in this run by 2 processes)'."""
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().most_common())
        by = f" by {self.embed_processes} process{'es' if self.embed_processes != 1 else ''}" if self.embedded_now else ""
        return f"{counts or 'no photos'} ({self.aligned_now} aligned, {self.embedded_now} embedded in this run{by})"


def embedding_cache_id(embedder_id: str, align_id: str) -> str:
    """Embedding cache folder name: the same weights on other crops are other vectors."""
    return f"{embedder_id}@{align_id}"


# ------------------------------------------------------------------------------------------------------------- workers


class _AlignDataset(Dataset):
    """Tasks for DataLoader workers: `PhotoAligner` on one photo.

    Paths and keys are numpy string arrays, not lists of str: forked workers then share them without copying every
    page (reference counts on millions of small Python objects would touch them all).
    """

    def __init__(self, paths, keys, modes, aligner: PhotoAligner):
        self.paths = np.array([str(p) for p in paths], dtype=str)
        self.keys = np.array(keys, dtype=str)
        self.modes = np.asarray(modes, np.uint8)
        self.aligner = aligner

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, np.void | None, str | None]:
        """(task index, crop or None, new alignment record or None, error status or None)."""
        return i, *self.aligner(str(self.paths[i]), str(self.keys[i]), int(self.modes[i]))


def _worker_init(_: int) -> None:
    """Workers run one thread each (the cores belong to the model in the main process) and die with their parent.

    Without the parent-death signal, a worker of a pass killed with SIGKILL can block forever writing its next batch to
    a pipe nobody reads, holding memory and the terminal's output pipes.
    """
    single_threaded()
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


@dataclass(frozen=True)
class _Collate:
    """Stack the crops of a batch into one uint8 tensor (pinnable); photos without a crop only carry their outcome.

    With an embedder (one that is single-threaded per call, `Embedder.per_process`), the worker that aligned the batch
    embeds it too, so that every core embeds: the batch then travels as its embeddings, not its crops.
    Returns (crops or None, metas, unit or None, norm or None, id of the embedding process or None). size: the crops'
    side (`CropGeometry.size`), for a batch with none.
    """

    size: int
    embedder: Embedder | None = None

    def __call__(self, items: list) -> tuple:
        crops = [crop for _, crop, _, _ in items if crop is not None]
        empty = torch.zeros((0, self.size, self.size, 3), dtype=torch.uint8)
        stacked = torch.from_numpy(np.stack(crops)) if crops else empty
        metas = [(i, crop is not None, record, error) for i, crop, record, error in items]
        if self.embedder is None:
            return stacked, metas, None, None, None
        return None, metas, *self.embedder.embed(stacked), os.getpid()


_PER_PROCESS_BATCH = 16  # photos per batch when the workers embed (dlib: ~1 s of one core)


def _local_batches(dataset: _AlignDataset, embedder: Embedder | None, batch_size: int, workers: int):
    """The local engine: DataLoader workers align; a per-process embedder (dlib) embeds in each worker, any other
    (intra-op threads, or a GPU) in this process. Yields `embeddings.photo.Batch`es.

    The batches are the same whatever the number of workers (DataLoader hands out whole batches in order; a
    per-process embedder gets batches of at most 16 photos, with or without workers), so the embeddings are
    bit-identical to a single-process pass.
    """
    cuda = embedder is not None and embedder.device.type == "cuda"
    per_process = embedder is not None and embedder.per_process
    in_workers = per_process and workers > 0
    if per_process:  # each batch is embedded by one worker: small ones keep the workers' shares even to the end
        batch_size = min(batch_size, _PER_PROCESS_BATCH)
    collate = _Collate(dataset.aligner.geometry.size, embedder if in_workers else None)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=cuda and not in_workers,
                        worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None)
    for crops, metas, unit, norm, pid in loader:
        if embedder is not None and unit is None:
            unit, norm = embedder.embed(crops)
            pid = os.getpid()
        yield metas, unit, norm, pid


# -------------------------------------------------------------------------------------------------------------- driver


def _status(record: np.void, fallback: bool) -> tuple[str, str]:
    """(status, method) of a stored alignment outcome: a centre crop counts unless the pass says face_crops "no"."""
    method = METHOD_CODES[int(record["method"])]
    if method in ("detected", "pre-aligned") or (method == "center_crop" and fallback):
        return "ok", method
    return record["problem"].decode("utf-8", "replace") or "no_face: no face found", ""


def _keys_for(paths: Sequence[Path], keys: Sequence[str] | None, progress: bool) -> tuple[list[str], list[str | None]]:
    """Content keys (given, or hashed in threads: hashlib releases the GIL) and an error status where hashing failed."""
    if keys is not None:
        if len(keys) != len(paths):
            raise ValueError(f"got {len(keys)} keys for {len(paths)} paths")
        return [check_key(k) for k in keys], [None] * len(paths)

    def one(path: Path) -> tuple[str, str | None]:
        try:
            return file_sha256(path), None
        except OSError as exc:
            return "", f"unreadable: cannot read file ({exc.strerror or exc})"

    with ThreadPoolExecutor(4) as pool:
        out = list(tqdm(pool.map(one, paths), total=len(paths), desc="hashing", unit="file", disable=not progress))
    return [k for k, _ in out], [e for _, e in out]


@dataclass
class _Pass:
    """What `_run` found out, per input path and per distinct content key ("unique")."""

    keys: list[str]  # per input
    rows: list[int | None]  # per input: its unique index, None when the file could not be hashed
    errors: list[str | None]  # per input: the hashing error
    ukeys: list[str]
    status: list[str]  # per unique
    method: list[str]  # per unique
    align_id: str
    store: ShardStore | None = None  # the embedding cache, closed and re-indexed (embed_images reads from it)
    aligned_now: int = 0
    embedded_now: int = 0
    embed_processes: int = 0  # processes that embedded side by side (the most in one round of this run)
    face_points: np.ndarray | None = None  # where faces sit in these photos, when the centre-crop fallback ran

    def per_input(self, values: Sequence, default):
        """Spread a per-unique list over the inputs (duplicates share a value; unhashable files get `default`)."""
        return [default if u is None else values[u] for u in self.rows]


def _off_centre(records: np.ndarray) -> np.ndarray:
    """Per record: a detected face outside the middle third of its photo, not yet replaced by a centre crop."""
    return (records["method"] == METHOD_CODES.index("detected")) & (records["problem"] == OFF_CENTRE.encode())


def _plan(records: np.ndarray, found: np.ndarray, done: np.ndarray, fallback: bool) -> np.ndarray:
    """Worker mode per unique key (255 = nothing to do in the first round). `done`: the result this run wants already
    exists. An off-centre face waits for the pass's verdict on face crops (see `_run`)."""
    modes = np.full(len(found), 255, np.uint8)
    off_centre = _off_centre(records)
    for u in range(len(found)):
        if not found[u]:
            modes[u] = MODE_ALIGN
        elif _status(records[u], fallback)[0] == "ok":
            if not done[u] and not off_centre[u]:
                modes[u] = MODE_FROM_CACHE
        elif fallback and records[u]["problem"].startswith(b"no_face") and records[u]["method"] == 0:
            modes[u] = MODE_FALLBACK
    return modes


class PassFailure(RuntimeError):
    """Most photos of a pass failed alignment with the same exception: a bug in this code or a broken model file,
    not a dataset without faces. Not a user error: the command shows its traceback. The finished work is kept."""


_GUARD_MIN_PHOTOS = 32  # judged once this many photos (or all of a smaller pass) are done
_GUARD_SHARE = 0.5  # one exception type on more than this share of them stops the pass


class _FailureGuard:
    """Counts the photos whose alignment raised, by exception type, and stops the pass when one type covers most of
    the pass's photos done so far, those found done in the caches included (a photo that raises is otherwise recorded
    as "no_face: alignment failed (...)"; a rerun retrying a few such photos of a large pass is not stopped)."""

    def __init__(self, total: int, already_done: int = 0):
        self.total = total
        self.done = already_done
        self.by_type: Counter = Counter()
        self.example: dict[str, str] = {}

    def add(self, status: str, path: Path) -> None:
        kind = failure_type(status)
        if kind is not None:
            self.by_type[kind] += 1
            self.example.setdefault(kind, f"{path}: {status}")

    def check(self, photos: int) -> None:
        """Count `photos` more done; raise PassFailure when one exception type covers most of them."""
        self.done += photos
        if not self.by_type or self.done < min(_GUARD_MIN_PHOTOS, self.total):
            return
        kind, n = self.by_type.most_common(1)[0]
        if n > _GUARD_SHARE * self.done:
            raise PassFailure(
                f"{n} of the {self.done} photos aligned so far raised {kind} (first: {self.example[kind]}); this is a "
                "bug or a broken model file, not photos without faces. The crops and embeddings made so far are kept."
            )


_FACE_SAMPLE = 256  # detected faces whose photo sizes are read to learn where faces sit


def _face_points(records: np.ndarray, paths: Sequence[Path], face_crops: str) -> np.ndarray | None:
    """`embeddings.align.face_crop_points` over up to 256 detected faces spread evenly over the pass (their photos'
    sizes read from the file headers): the same photos give the same points, whatever the engine or worker count."""
    detected = np.flatnonzero((records["method"] == METHOD_CODES.index("detected")) & ~_off_centre(records))
    sample = detected[np.unique(np.linspace(0, len(detected) - 1, min(len(detected), _FACE_SAMPLE)).astype(int))]
    relative = []
    for u in sample if len(detected) else ():
        try:
            width, height = image_size(paths[u])
        except ImageError:
            continue
        relative.append(records["points"][u] / np.array([width, height], np.float32))
    return face_crop_points(np.array(relative).reshape(-1, 5, 2), face_crops)


def _ray_engine(engine: str):
    """`embeddings.ray_engine` for engine "ray" (imported only then: Ray is an optional dependency); None for local."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "local":
        return None
    try:
        from embeddings import ray_engine
    except ImportError as exc:
        raise UserError(f"the Ray engine needs ray[data] ({exc}): pip install -r requirements-ray.txt") from exc
    return ray_engine


def _run(
    paths: Sequence[Path],
    embedder: Embedder | None,
    *,
    cache_dir: Path,
    keys: Sequence[str] | None,
    options: EmbedOptions,
) -> _Pass:
    """Shared by embed_images and align_images: the same tasks, workers, caches and statuses.

    With an embedder, every crop that has no embedding yet is embedded; without, only missing crops are made.
    The engine only decides where the work runs (`_local_batches` or `embeddings.ray_engine`); planning, caches and
    statuses are this function's, so the two engines' results and caches are interchangeable.
    Raises PassFailure when most photos fail alignment with the same exception (see `_FailureGuard`).
    """
    ray_engine = _ray_engine(options.engine)
    detector, aligned, progress = options.detector, options.aligned, options.progress
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir)
    fallback = options.face_crops != "no" and not aligned
    geometry = embedder.geometry if embedder is not None else ARCFACE
    aid = make_align_id(detector, aligned, geometry)
    all_keys, errors = _keys_for(paths, keys, progress)
    first: dict[str, int] = {}
    for i, k in enumerate(all_keys):
        if errors[i] is None:
            first.setdefault(k, i)
    ukeys = list(first)
    upaths = [paths[i] for i in first.values()]
    index = {k: u for u, k in enumerate(ukeys)}
    rows = [index[k] if errors[i] is None else None for i, k in enumerate(all_keys)]

    flush = dict(flush_seconds=options.checkpoint_seconds, flush_rows=options.checkpoint_rows)
    astore = alignment_store(cache_dir, aid, **flush)
    estore = None
    if embedder is not None:
        estore = embedding_store(cache_dir, embedding_cache_id(embedder.id, aid), embedder.dim, **flush)
    found, records = astore.lookup(ukeys)
    if estore is not None:
        done = estore.contains(ukeys)
    else:
        done = np.array([crop_path(cache_dir, aid, k).exists() for k in ukeys], bool)
    modes = _plan(records, found, done, fallback)
    if not aligned and np.isin(modes, (MODE_ALIGN, MODE_FROM_CACHE)).any():
        get_detector(detector)  # fail now on a bad model file; forked workers inherit it when that is safe

    errors_now: dict[int, str] = {}
    out = _Pass(all_keys, rows, errors, ukeys, [], [], aid, estore)

    def run_round(todo: np.ndarray, aligner: PhotoAligner, what: str) -> None:
        """Hand the tasks `todo` (unique indices) to the engine; store what comes back as it comes."""
        task_paths, task_keys = [upaths[u] for u in todo], [ukeys[u] for u in todo]
        if ray_engine is not None:
            batches = ray_engine.ray_batches(task_paths, task_keys, modes[todo], aligner, embedder,
                                             batch_size=options.batch_size, address=options.ray_address)
        else:
            batches = _local_batches(_AlignDataset(task_paths, task_keys, modes[todo], aligner), embedder,
                                     options.batch_size, options.worker_count())
        tally: Counter = Counter()
        guard = _FailureGuard(len(ukeys), len(ukeys) - len(todo))
        embedded_by: set[int] = set()
        bar = tqdm(total=len(todo), desc=what, unit="img", disable=not progress or not len(todo), smoothing=0.05)
        with bar, contextlib.closing(batches):  # closing: stops the engine's workers at once if this loop fails
            for metas, unit, norm, pid in batches if len(todo) else ():
                new, emb_keys = [], []
                for t, has_crop, record, error in metas:
                    u = todo[t]
                    if error is not None:
                        errors_now[u] = error
                        tally[error.split(":", 1)[0]] += 1
                        guard.add(error, upaths[u])
                        continue
                    if record is not None:
                        problem = records["problem"][u]
                        records[u] = record
                        if modes[u] == MODE_FALLBACK:  # keep the reason no face was found
                            records["problem"][u] = problem
                        new.append(u)
                    if has_crop:
                        emb_keys.append(ukeys[u])
                    tally[_status(records[u], fallback)[0].split(":", 1)[0]] += 1
                if new:
                    astore.add(records[new])
                    out.aligned_now += len(new)
                if estore is not None and emb_keys:
                    rec = np.zeros(len(emb_keys), estore.dtype)
                    rec["key"] = [k.encode("ascii") for k in emb_keys]
                    rec["emb"], rec["norm"] = unit, norm
                    estore.add(rec)
                    out.embedded_now += len(emb_keys)
                    embedded_by.add(pid)
                    out.embed_processes = max(out.embed_processes, len(embedded_by))
                bar.update(len(metas))
                bar.set_postfix(dict(tally), refresh=False)
                guard.check(len(metas))

    aligner = PhotoAligner(detector, aligned, cache_dir, aid, geometry=geometry)
    try:
        run_round(np.flatnonzero((modes != 255) & (modes != MODE_FALLBACK)),
                  aligner, "aligning + embedding" if estore is not None else "aligning")
        # Face-crop photos whose face was not found, or was found only off-centre (a bystander's), known from a
        # past run or found just now, are embedded from where faces sit in the others; off-centre faces in photos
        # that are not face crops are embedded as detected.
        off_centre = _off_centre(records) & ~done
        off_centre[list(errors_now)] = False
        points = None
        if fallback:
            missing = (records["method"] == 0) & np.char.startswith(records["problem"], b"no_face")
            missing[list(errors_now)] = False
            todo = np.flatnonzero((missing | off_centre) & ~done)
            points = _face_points(records, upaths, options.face_crops) if len(todo) else None
            if points is not None:
                modes[todo] = MODE_FALLBACK
                out.face_points = points
                run_round(todo, replace(aligner, face_points=tuple(map(tuple, points.tolist()))),
                          "centre-crop fallback")
        if points is None and off_centre.any():
            modes[off_centre] = MODE_FROM_CACHE
            run_round(np.flatnonzero(off_centre), replace(aligner, defer_off_centre=False), "off-centre faces")
    finally:  # also on Ctrl-C or an embedder error: what was computed is kept for the next run
        astore.close()
        if estore is not None:
            estore.close()
    for u in range(len(ukeys)):
        status, method = (errors_now[u], "") if u in errors_now else _status(records[u], fallback)
        out.status.append(status)
        out.method.append(method)
    return out


def embed_images(
    paths: Sequence[Path],
    embedder: Embedder,
    *,
    cache_dir: Path,
    keys: Sequence[str] | None = None,
    options: EmbedOptions | None = None,
) -> EmbedResult:
    """Align and embed photos, reusing and extending the caches under `cache_dir`.

    Inputs: photo paths; an embedder from `embeddings.embedders.make_embedder`; `cache_dir` (WORK/cache); optional
    content keys (e.g. the sha256 the label store recorded at ingest; hashed here otherwise); `EmbedOptions` (detector,
    pre-aligned photos, centre-crop fallback, batch size, workers, checkpoint interval, engine; default
    `EmbedOptions()`). engine "local": DataLoader workers align, this process embeds; "ray": actor pools on a Ray
    cluster align and embed (see `embeddings.ray_engine`; `ray_address` as for `ray.init`, e.g. "auto" or
    "ray://head:10001", None = $RAY_ADDRESS or a Ray started on this machine). Both write the same caches: either finds
    the other's work done.
    Output: `EmbedResult` (one row per path, in order). Photos already embedded under the same embedder and alignment
    are not decoded again; a photo that fails gets a status and a NaN row, never an exception. Raises PassFailure when
    most photos fail alignment with the same exception (a bug or a broken model, not a dataset without faces).

    Example:
        >>> r = embed_images(paths, make_embedder("onnx:mobilefacenet.onnx"), cache_dir=Path("WORK/cache"))
        >>> ok = np.array(r.status) == "ok"
        >>> sims = r.embeddings[ok] @ r.embeddings[ok].T
    """
    run = _run(paths, embedder, cache_dir=cache_dir, keys=keys, options=options or EmbedOptions())
    cache_id = embedding_cache_id(embedder.id, run.align_id)
    ok = [u for u, s in enumerate(run.status) if s == "ok"]
    found, stored = run.store.lookup([run.ukeys[u] for u in ok])
    uemb = np.full((len(run.ukeys), embedder.dim), np.nan, np.float32)
    unorm = np.full(len(run.ukeys), np.nan, np.float32)
    vectors = stored["emb"].astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # float16 rounding moved the norm
    have = np.asarray(ok, np.int64)[found]
    uemb[have], unorm[have] = vectors[found], stored["norm"][found]
    for u in np.asarray(ok, np.int64)[~found]:
        run.status[u], run.method[u] = _NO_EMBEDDING, ""
    rows = np.array([-1 if u is None else u for u in run.rows], np.int64)
    valid = rows >= 0
    emb = np.full((len(rows), embedder.dim), np.nan, np.float32)
    norms = np.full(len(rows), np.nan, np.float32)
    emb[valid], norms[valid] = uemb[rows[valid]], unorm[rows[valid]]
    status = [e if e is not None else s for e, s in zip(run.errors, run.per_input(run.status, None))]
    return EmbedResult(run.keys, emb, norms, status, run.per_input(run.method, ""), run.align_id, cache_id,
                       run.aligned_now, run.embedded_now, run.embed_processes)


def align_images(
    paths: Sequence[Path],
    *,
    cache_dir: Path,
    keys: Sequence[str] | None = None,
    options: EmbedOptions | None = None,
) -> list[tuple[Path | None, str]]:
    """Make (or find) the aligned crops of photos, exactly as the embedding pass does: same detector, caches, statuses.

    For training and for the app: inputs as `embed_images` (no embedder; always the local engine). Output: per path,
    in order, (crop path, "ok") or (None, "<kind>: <reason>"). Read the crops with `CropDataset`.

    Example:
        >>> crops = align_images(paths, cache_dir=Path("WORK/cache"))
        >>> dataset = CropDataset([p for p, status in crops if status == "ok"])
    """
    run = _run(paths, None, cache_dir=cache_dir, keys=keys, options=replace(options or EmbedOptions(), engine="local"))
    out = []
    for key, error, status in zip(run.keys, run.errors, run.per_input(run.status, None)):
        status = error or status
        out.append((crop_path(cache_dir, run.align_id, key) if status == "ok" else None, status))
    return out


class CropDataset(Dataset):
    """A torch Dataset over cached crops (from `align_images`): item i is a uint8 RGB tensor [112, 112, 3].

    Convert a batch with `embeddings.preprocess.to_input(batch, convention)`; augment (e.g. flip) before that.
    A crop that went missing since `align_images` raises FileNotFoundError naming it (re-run align_images).
    """

    def __init__(self, crop_paths: Sequence[Path]):
        self.paths = np.array([str(p) for p in crop_paths], dtype=str)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        crop = read_crop(Path(self.paths[i]))
        if crop is None:
            raise FileNotFoundError(f"{self.paths[i]}: cached crop missing or damaged; run align_images again")
        return torch.from_numpy(crop)
