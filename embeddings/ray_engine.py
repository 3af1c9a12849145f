"""The embedding pass on a Ray cluster: `embed_images(..., engine="ray")`, `python -m curation.clean --engine ray`.

Why Ray Data: past a few million photos one machine's GPUs are not enough, and a well-kept engine already schedules,
streams and retries work across machines. The photos still to do (planned by `embeddings.pipeline._run`, as for the
local pass) stream through two actor pools:
  1. align actors (1 CPU each; Ray Data grows the pool to keep up): `PhotoAligner`, the local pass's own per-photo code,
     decodes and aligns each photo (or reads its cached crop) and writes its crop file;
  2. embed actors (one GPU each when the cluster has GPUs, else 1 CPU each): the embedder, rebuilt from its spec once
     per actor, runs on whole batches.
Two pools rather than one because decoding + detection costs a CPU tens of milliseconds per photo: an actor that
aligned and then embedded would leave its GPU idle most of the time. The driver receives the batches and writes the
alignment and embedding caches with the same code as the local pass, so the results, the on-disk format and the
caches are the same whichever engine ran (a later local run finds everything done, and vice versa).

On a cluster, every node must see the photos, the work folder (its cache/ receives the crop files that the align
actors write) and the model files at the same absolute paths: a shared filesystem (NFS, Lustre, a cloud file share).
Every node also needs the project's requirements (requirements-ray.txt) installed; `init_ray` ships the driver's copy
of the code (`embeddings`, `labels`) to the actors.

Example:
    >>> init_ray("auto")          # or let embed_images start / join Ray itself: embed_images(..., ray_address="auto")
    >>> result = embed_images(paths, make_embedder("onnx:/shared/models/r100.onnx"),
    ...                       cache_dir=Path("/shared/work/cache"), engine="ray")
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.util.debug import log_once

import embeddings
import labels
from embeddings.cache import alignment_dtype
from embeddings.embedders import Embedder, EmbedderError, make_embedder
from embeddings.photo import Batch, PhotoAligner, get_detector, single_threaded

__all__ = ["init_ray", "ray_batches"]

_BLOCK_BATCHES = 8  # input block = this many batches: enough blocks to spread, few enough for a 10M-photo plan


class _AlignActor:
    """Stage 1: `PhotoAligner` on every photo of a batch; the detector is built once per actor, single-threaded."""

    def __init__(self, aligner: PhotoAligner):
        single_threaded()
        self.aligner = aligner
        if not aligner.aligned:
            get_detector(aligner.detector, threads=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [self.aligner(str(p), str(k), int(m)) for p, k, m in zip(batch["path"], batch["key"], batch["mode"])]
        dtype = alignment_dtype()
        no_crop = np.zeros((self.aligner.geometry.size,) * 2 + (3,), np.uint8)
        records = np.array([r if r is not None else np.zeros((), dtype) for _, r, _ in done], dtype)
        return {
            "task": batch["task"],
            "crop": np.stack([no_crop if c is None else c for c, _, _ in done]),
            "has_crop": np.array([c is not None for c, _, _ in done]),
            "new": np.array([r is not None for _, r, _ in done]),
            "record": records.view(np.uint8).reshape(len(done), dtype.itemsize),  # raw bytes: any record layout
            "error": np.array([e or "" for _, _, e in done], dtype=object),
        }


class _EmbedActor:
    """Stage 2: the embedder on the crops of a batch, on this actor's GPU if Ray gave it one."""

    def __init__(self, spec: str, flip: bool, embedder_id: str):
        self.embedder = make_embedder(spec, "cuda" if ray.get_gpu_ids() else "cpu", flip)
        if self.embedder.id != embedder_id:
            raise EmbedderError(
                f"{spec}: the model file on this node ({self.embedder.id}) differs from the driver's ({embedder_id});"
                " every node must see the same file"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops, has = batch.pop("crop"), batch["has_crop"]
        unit = np.full((len(has), self.embedder.dim), np.nan, np.float32)
        norm = np.full(len(has), np.nan, np.float32)
        unit[has], norm[has] = self.embedder.embed(crops[has])
        return {**batch, "unit": unit, "norm": norm, "pid": np.full(len(has), os.getpid(), np.int64)}


def _to_batch(columns: dict[str, np.ndarray]) -> Batch:
    """A result block as `embeddings.photo.Batch`, the form the driver's cache-writing loop takes."""
    records = np.ascontiguousarray(columns["record"]).view(alignment_dtype())[:, 0]
    has = columns["has_crop"].astype(bool)
    metas = [
        (int(t), bool(h), records[j] if new else None, str(e) or None)
        for j, (t, h, new, e) in enumerate(zip(columns["task"], has, columns["new"], columns["error"]))
    ]
    pid = int(columns["pid"][0]) if len(columns["pid"]) else None
    return metas, columns["unit"][has], columns["norm"][has], pid


def _task_blocks(paths: Sequence[Path], keys: Sequence[str], modes: np.ndarray, rows: int) -> list[pa.Table]:
    """The plan as Arrow tables of `rows` tasks each (`from_blocks` keeps them as they are and reads their metadata
    here, where `from_pandas` would start a Ray task per block to do it)."""
    return [
        pa.table({"task": np.arange(i, i + len(keys[i : i + rows])), "key": list(keys[i : i + rows]),
                  "path": [str(Path(p).absolute()) for p in paths[i : i + rows]],
                  "mode": np.asarray(modes[i : i + rows], np.int64)})
        for i in range(0, len(keys), rows)
    ]


def _absolute(spec: str) -> str:
    """A model spec with its file made absolute ("onnx:m/x.onnx" -> "onnx:/home/u/m/x.onnx"): actors do not run in
    the driver's working folder."""
    head, sep, file = spec.rpartition(":")
    path = Path(file).expanduser()
    return f"{head}:{path.absolute()}" if sep and path.exists() else spec


def init_ray(address: str | None = None, **kwargs) -> None:
    """`ray.init` for the embedding pass: starts a local Ray (address None, no $RAY_ADDRESS) or joins a cluster
    ("auto", "ray://head:10001"), shipping this process's copy of the code (`embeddings`, `labels`) to the actors, so
    that a node never runs another alignment than the one the cache ids promise (the libraries must be installed on
    every node). `embed_images(..., engine="ray")` calls it when Ray is not initialised yet; call it yourself to keep
    one Ray session over several passes (kwargs go to `ray.init`).

    Example:
        >>> init_ray(num_cpus=2)           # a local Ray on 2 cores (tests)
        >>> init_ray("auto")               # the cluster this machine belongs to (`ray start --head` / `--address`)
    """
    code = [str(Path(package.__file__).parent) for package in (embeddings, labels)]
    ray.init(address=address, runtime_env={"py_modules": code}, logging_level=logging.WARNING, **kwargs)


def ray_batches(
    paths: Sequence[Path],
    keys: Sequence[str],
    modes: np.ndarray,
    aligner: PhotoAligner,
    embedder: Embedder,
    *,
    batch_size: int,
    address: str | None = None,
) -> Iterator[Batch]:
    """Align and embed photos on Ray; yields `Batch`es (task index = position in `paths`) as they complete.

    Inputs: the tasks `embeddings.pipeline._run` planned (paths, content keys, modes), its `PhotoAligner` and the
    pass's embedder (built by `make_embedder`: the actors rebuild it from `embedder.spec`, and refuse to run if their
    copy of the model file differs). address: for `init_ray` when Ray is not initialised in this process yet (this
    pass then shuts it down at the end); otherwise ignored. Nothing starts before the first batch is asked for.
    The driver writes the caches as batches arrive, so a pass interrupted on the cluster resumes like a local one.

    Example:
        >>> for metas, unit, norm, pid in ray_batches(paths, keys, modes, aligner, embedder, batch_size=64):
        ...     print(len(metas), unit.shape)
    """
    if not embedder.spec:
        raise ValueError("the Ray engine rebuilds the embedder in each actor from its spec: use make_embedder(spec)")
    started = not ray.is_initialized()
    if started:
        init_ray(address)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its warnings, not its progress chatter
    log_once("ray_data_progress_manager_disabled")  # the pass has its own progress bar: no note that Ray's are off
    try:
        resources = ray.cluster_resources()
        cpus, gpus = max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))
        on_gpu = gpus > 0 and embedder.spec != "dlib"  # dlib's embedder only runs on the CPU
        ds = ray.data.from_blocks(_task_blocks(paths, keys, modes, batch_size * _BLOCK_BATCHES))
        ds.context.enable_progress_bars = False  # the driver's own bar counts the photos
        aligner = replace(aligner, cache_dir=Path(aligner.cache_dir).absolute(), detector=_absolute(aligner.detector))
        ds = ds.map_batches(
            _AlignActor, fn_constructor_args=(aligner,), batch_size=batch_size, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cpus - (gpus if on_gpu else 1))),
        )
        ds = ds.map_batches(
            _EmbedActor, fn_constructor_args=(_absolute(embedder.spec), embedder.flip, embedder.id),
            batch_size=batch_size, batch_format="numpy", num_cpus=1, num_gpus=1 if on_gpu else 0,
            compute=ray.data.ActorPoolStrategy(size=gpus) if on_gpu
            else ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, math.ceil(cpus / 2))),
        )
        for columns in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield _to_batch(columns)
    finally:  # also when the driver stops early (Ctrl-C, an error): close the generator to get here at once
        if started:
            ray.shutdown()
