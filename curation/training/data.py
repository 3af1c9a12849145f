"""What a fine-tuning run feeds the model: labels -> aligned crops -> per-epoch pairs, and the validation pairs.

Why a module of its own: the data side of `curation.train_on_clean` must stay exactly in step with the rest of the
product. Labels are what `labels.export` would write (`effective_labels`), crops come from the embedding pass's cache
(`embeddings.pipeline.align_images`, read back by its `CropDataset`), and pairs are the recipe's 50/25/25
(`curation.training.pairs`). Everything random is drawn from (seed, epoch), so an epoch can be rebuilt at any step on resume.

Example:
    >>> data = prepare_data(cfg)                      # TrainData: table of usable photos, identity-disjoint split
    >>> ep = epoch_data(data, cfg, epoch=0, classes=None)
    >>> ep.dataset[0]                                 # (crop_a, crop_b, label, kind): uint8 [112, 112, 3] crops
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from curation.training.pairs import PairStats, Pairs, make_pairs, split_identities
from curation.training.config import TrainConfig
from embeddings.options import EmbedOptions
from embeddings.pipeline import CropDataset, align_images
from labels.cli import UserError
from labels.export import effective_labels
from labels.ingest import IngestError, ingest
from labels.layouts import LayoutError
from labels.store import STORE_NAME, LabelStore, StoreError

# Identities of --val-data are renamed with this prefix inside a run, so they never mix with DATA's.
VAL_PREFIX = "val:"
# Validation pairs come from a generator of their own, never from an epoch's.
_VAL_STREAM = 1_000_003



class TrainError(UserError):
    """Something about the data, the run folder or the checkpoint that stops a run; printed as one line, exit code 2."""


# ---- data -----------------------------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """The photos a run trains and validates on, after alignment.

    `table`: one row per usable photo (index = row number), columns identity, is_fake, crop (path of the aligned
    112x112 crop in the cache). `train_ids` / `val_ids`: the identity-disjoint split. `notes`: lines for the log.
    """

    table: pd.DataFrame
    train_ids: list[str]
    val_ids: list[str]
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.crops = CropDataset(self.table["crop"].tolist())

    # Pickled when rank 0 sends the prepared data to the other ranks (curation.training.distributed.from_main): the crops are
    # rebuilt from the table on arrival rather than sent twice.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "crops"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()


class CropPairs(Dataset):
    """Item i of one epoch: the two aligned crops of pair i (uint8 HWC tensors, mirrored when drawn so), label, kind.

    Crops are read by the embedding pipeline's `CropDataset` in DataLoader workers and turned into model input in the
    main process by `to_input(..., "adaface")` on the whole batch: the embedding pass's code path, not a copy of it.
    """

    def __init__(self, crops: CropDataset, a: np.ndarray, b: np.ndarray, flip_a: np.ndarray, flip_b: np.ndarray,
                 label: np.ndarray, kind: np.ndarray):
        self.crops, self.a, self.b, self.flip_a, self.flip_b = crops, a, b, flip_a, flip_b
        self.label, self.kind = label, kind

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int):
        return (
            _crop(self.crops, self.a[i], self.flip_a[i]),
            _crop(self.crops, self.b[i], self.flip_b[i]),
            np.float32(self.label[i]),
            np.int64(self.kind[i]),
        )


class CropImages(Dataset):
    """Item i: one aligned crop (uint8 HWC tensor, mirrored when drawn so) and its class index (-1 when it has none)."""

    def __init__(self, crops: CropDataset, rows: np.ndarray, flip: np.ndarray, target: np.ndarray):
        self.crops, self.rows, self.flip, self.target = crops, rows, flip, target

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return _crop(self.crops, self.rows[i], self.flip[i]), np.int64(self.target[i])


def _crop(crops: CropDataset, row: int, flip: bool) -> torch.Tensor:
    crop = crops[int(row)]
    return crop.flip(1) if flip else crop  # [H, W, 3]: dim 1 is the width


class RankSlices(Sampler[int]):
    """The items of one epoch a process reads, from global item `start` on, in whole global batches.

    Global batch k is items [k*B, (k+1)*B) of the epoch's order, which every rank draws identically from (seed, epoch);
    under torchrun with W processes rank r reads the r-th slice of B/W of it (a DistributedSampler that keeps the
    epoch's order and resumes mid-epoch). So step k trains on the same B pairs whatever W is, `start` counts global
    items (step_in_epoch * B), and with W = 1 it is range(start, ...) over whole batches: the single-process order.

    Example:
        >>> list(RankSlices(10, start=4, batch_size=4, rank=1, size=2))    # global batch [4..8); rank 1 reads 6, 7
        [6, 7]
    """

    def __init__(self, n: int, start: int, batch_size: int, rank: int = 0, size: int = 1):
        self.per, self.batch_size = batch_size // size, batch_size
        self.first = start + rank * self.per
        self.steps = max(0, (n - start) // batch_size)

    def __len__(self) -> int:
        return self.steps * self.per

    def __iter__(self):
        for k in range(self.steps):
            first = self.first + k * self.batch_size
            yield from range(first, first + self.per)


def epoch_loader(
    dataset: Dataset, cfg: TrainConfig, start: int, device: torch.device, rank: int = 0, size: int = 1
) -> DataLoader:
    """This process's batches of the epoch from global item `start` on: `cfg.batch_size` is the global batch, split
    over the `size` processes (see RankSlices). The loader draws nothing from the global torch RNG (so resuming replays
    dropout exactly): its workers are seeded by a private generator and the order is fixed."""
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size // size,
        sampler=RankSlices(len(dataset), start, cfg.batch_size, rank, size),
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=False,
    )


@dataclass
class Epoch:
    """What one epoch feeds the model, regenerated from (seed, epoch) alone."""

    dataset: Dataset
    steps: int
    stats: PairStats | None


def epoch_data(data: TrainData, cfg: TrainConfig, epoch: int, classes: dict[str, int] | None) -> Epoch:
    """The shuffled pairs (objective pair) or images (objective adaface) of `epoch`, flips included."""
    rng = np.random.default_rng([cfg.seed, epoch])
    crops = data.crops
    train = data.table[data.table["identity"].isin(data.train_ids)]
    if cfg.objective == "pair":
        pairs, stats = make_pairs(train, seed=[cfg.seed, epoch], max_pos_per_identity=cfg.max_pos_per_identity,
                                  fake_share=cfg.fake_fraction)
        n = len(pairs)
        flips = rng.random((2, n)) < 0.5 if cfg.flip else np.zeros((2, n), bool)
        ds = CropPairs(crops, pairs.a, pairs.b, flips[0], flips[1], pairs.label, pairs.kind)
        return Epoch(ds, n // cfg.batch_size, stats)
    reals = train[~train["is_fake"].astype(bool)]
    rows = reals.index.to_numpy()[rng.permutation(len(reals))]
    target = np.array([classes[i] for i in data.table.loc[rows, "identity"]], np.int64)
    flip = rng.random(len(rows)) < 0.5 if cfg.flip else np.zeros(len(rows), bool)
    return Epoch(CropImages(crops, rows, flip, target), len(rows) // cfg.batch_size, None)


def validation_pairs(data: TrainData, cfg: TrainConfig) -> tuple[Pairs, PairStats]:
    """The validation pairs: the recipe's 50/25/25 on the held-out identities (whatever `fake_fraction` training uses,
    so figures stay comparable between runs), drawn once from the run's seed."""
    val = data.table[data.table["identity"].isin(data.val_ids)]
    return make_pairs(val, seed=[cfg.seed, _VAL_STREAM], max_pos_per_identity=cfg.max_pos_per_identity)


def ingest_folders(cfg: TrainConfig) -> list[str]:
    """The sub-folders of RUN that `prepare_data` will ingest dataset folders into ("work" for DATA, "val_work" for
    --val-data): those that are folders without a label store. The run folder hands them to the ingest (see
    RunFolder.manage) before they are written, so a fresh run on an exported dataset can claim RUN."""
    return [name for name, src in (("work", cfg.data), ("val_work", cfg.val_data))
            if src and Path(src).is_dir() and not (Path(src) / STORE_NAME).is_file()]


def prepare_data(cfg: TrainConfig, *, say: Callable[[str], None] = print, progress: bool = True) -> TrainData:
    """The labels to train on, aligned: exactly what an export would write, through the embedding pass's crop cache.

    DATA with a labels.sqlite is a work folder: its labels after review (`labels.export.effective_labels` with
    `cfg.unreviewed`), removed photos left out. Any other folder is a dataset (an export, say): it is ingested into
    RUN/work first (resumable, like every ingest). Crops come from `embeddings.pipeline.align_images` with the run's
    detector settings, keyed by the sha256 ingest recorded, so photos the cleaning run aligned are not aligned again.
    Validation: a seeded identity-disjoint split of DATA, or every identity of `cfg.val_data` (a fixed, trusted set,
    read the same way with its labels as they stand) when given.
    """
    table, notes = _aligned_labels(Path(cfg.data), cfg, cfg.unreviewed, Path(cfg.out) / "work", say, progress)
    if not cfg.val_data:
        reals = table.loc[~table["is_fake"], "identity"]
        train_ids, val_ids = split_identities(reals, cfg.val_fraction, cfg.seed)
        notes.append(f"split (seed {cfg.seed}): {len(train_ids):,} training and {len(val_ids):,} validation identities")
        return TrainData(table, train_ids, val_ids, notes)
    val, val_notes = _aligned_labels(Path(cfg.val_data), cfg, "keep", Path(cfg.out) / "val_work", say, progress)
    shared = set(table["identity"]) & set(val["identity"])
    if shared:
        notes.append(
            f"warning: {len(shared)} identity name(s) appear in both DATA and --val-data (e.g. {sorted(shared)[0]}):"
            " if they are the same people, validation is not held out"
        )
    train_ids = sorted(set(table.loc[~table["is_fake"], "identity"]))
    val["identity"] = VAL_PREFIX + val["identity"]  # kept apart from DATA's identities, whatever their names
    val_ids = sorted(set(val.loc[~val["is_fake"], "identity"]))
    notes += [f"validation set {cfg.val_data}: " + n for n in val_notes]
    return TrainData(pd.concat([table, val], ignore_index=True), train_ids, val_ids, notes)


def _aligned_labels(
    data: Path, cfg: TrainConfig, unreviewed: str, ingest_to: Path, say: Callable[[str], None], progress: bool
) -> tuple[pd.DataFrame, list[str]]:
    """(image_id, path, identity, is_fake, crop) of every usable photo of a work or dataset folder, and log lines."""
    if (data / STORE_NAME).is_file():
        workdir = data
    elif data.is_dir():
        workdir = ingest_to
        say(f"{data} is a dataset folder: ingesting it into {workdir}")
        try:
            summary = ingest(data, workdir, progress=progress)
        except (IngestError, LayoutError, StoreError) as exc:
            raise TrainError(f"{data}: {exc}") from None
        say(summary.report())
    else:
        raise TrainError(f"{data}: no such folder (expected a work folder with {STORE_NAME} or a dataset folder)")
    try:
        with LabelStore.open(workdir) as store:
            labels = effective_labels(store, unreviewed)
            n_removed = int(labels["removed"].sum())
            labels = labels[~labels["removed"]].reset_index(drop=True)
            sha = store.images(ids=labels["image_id"].tolist()).set_index("id")["sha256"]
            paths = [store.resolve(rel) for rel in labels["path"]]  # refuses paths that would leave the dataset
    except StoreError as exc:
        raise TrainError(f"{workdir}: {exc}") from None
    if labels.empty:
        raise TrainError(f"{workdir}: no photos left to train on (all removed, or nothing ingested)")
    crops = align_images(
        paths, cache_dir=workdir / "cache", keys=labels["image_id"].map(sha).tolist(),
        options=EmbedOptions(detector=cfg.detector, aligned=cfg.aligned, workers=cfg.workers, progress=progress),
    )
    status = pd.Series([s.split(":", 1)[0] for _, s in crops])
    ok = (status == "ok").to_numpy()
    table = labels.loc[ok, ["image_id", "path", "identity", "is_fake"]].reset_index(drop=True)
    table["crop"] = [str(path) for (path, _), usable in zip(crops, ok) if usable]
    lost = ", ".join(f"{n} {kind}" for kind, n in status[~ok].value_counts().items())
    notes = [
        f"labels from {workdir} (unreviewed flags: {unreviewed}): {len(labels):,} photos of "
        f"{labels['identity'].nunique():,} identities ({int(labels['is_fake'].sum()):,} deepfakes), {n_removed:,} removed"
        " photos left out",
        f"aligned ({'pre-aligned crops' if cfg.aligned else cfg.detector}): {int(ok.sum()):,} usable"
        + (f"; left out: {lost}" if lost else ""),
    ]
    return table, notes
