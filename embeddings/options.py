"""How an embedding pass runs: the settings `embed_images` and `align_images` share, in one dataclass.

Why one dataclass: clean, evaluate, predict, training and the benchmarks all start the same pass; spelling its nine
settings as keyword arguments in every signature let them drift apart (a new setting reached some callers only).
`curation.cli.embed_options(args)` builds one from the command-line options.

Example:
    >>> options = EmbedOptions(detector="scrfd:scrfd_2.5g_bnkps.onnx", workers=0, progress=False)
    >>> embed_images(paths, embedder, cache_dir=Path("WORK/cache"), options=options)
    >>> align_images(paths, cache_dir=Path("WORK/cache"), options=replace(options, batch_size=128))
"""
from __future__ import annotations

import os
from dataclasses import dataclass

ENGINES = ("local", "ray")  # where the pass runs: DataLoader workers + this process, or a Ray cluster


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and `taskset` narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class EmbedOptions:
    """Settings of one embedding pass (see `embeddings.pipeline.embed_images` for what each does to the results).

    detector: "dlib" | "scrfd:<file.onnx>", or two joined by "+" ("dlib+scrfd:<file>": the second one looks at the
      photos where the first finds no face). aligned: the photos already are 112x112 template crops (only the size is
      checked). face_crops: "auto" | "yes" | "no": whether the photos are face crops (LFW style: one face, centred);
      in face crops a photo where no detector finds the face is embedded from where faces sit in the other photos
      (method "center_crop", a weak alignment; `embeddings.align.face_crop_points`). batch_size: crops per model call. workers: DataLoader processes (None = one per usable core;
      0 = all in this process). progress: progress bars. checkpoint_seconds / checkpoint_rows: results reaching this
      process are written to disk at least this often, so a killed run loses at most about that much work (see the
      README's "what a kill keeps"). engine / ray_address: where the pass runs.
    """

    detector: str = "dlib"
    aligned: bool = False
    face_crops: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    progress: bool = True
    checkpoint_seconds: float = 5.0
    checkpoint_rows: int = 256
    engine: str = "local"
    ray_address: str | None = None

    def worker_count(self) -> int:
        """DataLoader worker processes this pass starts."""
        return usable_cores() if self.workers is None else self.workers
