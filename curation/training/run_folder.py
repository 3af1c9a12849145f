"""The run folder of a fine-tuning run, and how it survives being killed at any moment.

Layout of RUN:
    config.json                  the resolved TrainConfig (what --resume reads back)
    performance_history.json     one record per validation: step, lr, train loss, every metric, time
    last.pt, best.pt             backbones in the format embeddings.load_backbone reads (meta: step, epoch, eer, ...)
    checkpoints/step_<step>_eer_<eer>.pt   the `keep_best` best by validation EER (older ones deleted)
    state/step_<step>.pt         optimizer, scheduler, scaler, head, data order (epoch, step), RNG states, kept list

Why the state file carries its step in its name: last.pt and its training state are two files, and a kill can land
between their two writes. The state for step S is written first, then last.pt (meta step S), then older states are
deleted, so whatever moment the kill comes, the state named after last.pt's step exists. Every file is written to a
temporary name and renamed, so none is ever half-written. On resume, `reconcile` drops what a killed run wrote after
its last complete save (history records, checkpoints), so the replayed steps write them again.

Everything in a state file loads with `torch.load(weights_only=True)`: RNG states are stored as tensors.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from labels.cli import UserError
from labels.files import atomic_write, write_json

# torch is imported by the methods that save and load training state only: the review app and
# `curation.evaluate --compare` read run folders without paying for it.

HISTORY_NAME = "performance_history.json"


def read_history(path: str | Path) -> list[dict]:
    """The validation records of a run, as `RunFolder.append_history` writes them: a JSON list of flat records
    (step, epoch, lr, train_loss, eer, eer_threshold, ..., per_type: {pair type: error rate}, tar_at_far: {...}).

    The one reader of RUN/performance_history.json (training's resume, `evaluate --compare`, the review app).
    Raises UserError naming the file when it is missing, unreadable or not a list of records.

    Example:
        >>> [r["eer"] for r in read_history("runs/ft1/performance_history.json")]
        [0.041, 0.035]
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (written by `python -m curation.train_on_clean`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{path}: expected a list of validation records")
    return records


@dataclass(frozen=True)
class Kept:
    """One checkpoint kept for its validation EER."""

    step: int
    eer: float
    file: str  # name inside RUN/checkpoints


def update_top_k(kept: list[Kept], new: Kept, k: int) -> tuple[list[Kept], list[Kept]]:
    """Admit `new` into the `k` best (lowest EER; on a tie the earlier step stays ahead).

    Output: (the new kept list, best first; the entries that fell out, which may be `new` itself).

    Example:
        >>> kept, gone = update_top_k([Kept(100, 0.2, "a"), Kept(200, 0.1, "b")], Kept(300, 0.15, "c"), k=2)
        >>> [x.step for x in kept], [x.step for x in gone]
        ([200, 300], [100])
    """
    ranked = sorted([*kept, new], key=lambda x: (x.eer, x.step))
    return ranked[:k], ranked[k:]


class RunFolder:
    """Paths and crash-safe writes of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.history_file = self.path / HISTORY_NAME
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.checkpoints = self.path / "checkpoints"
        self.states = self.path / "state"

    def has_run(self) -> bool:
        """True when a run has already been started here (so a fresh start would mix two runs)."""
        return self.config.exists()

    # ---- history ----------------------------------------------------------------------------------------------
    def history(self) -> list[dict]:
        return read_history(self.history_file) if self.history_file.exists() else []

    def append_history(self, record: dict) -> None:
        """Rewrite the whole file with one more record (it stays small: one record per validation)."""
        write_json(self.history_file, [*self.history(), record])

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def keep_checkpoint(
        self, kept: list[Kept], step: int, eer: float, k: int, save: Callable[[Path], None]
    ) -> tuple[list[Kept], bool]:
        """Offer the model at `step` to the `k` best; save it (via `save(path)`) only if admitted.

        Returns (new kept list, whether `step` became the best); best.pt is refreshed when it did. Evicted files are
        deleted by `prune`, after the state that no longer lists them is saved, so a saved state's files always exist.
        """
        entry = Kept(step, float(eer), f"step_{step:08d}_eer_{eer:.4f}.pt")
        kept, _ = update_top_k(kept, entry, k)
        if entry in kept:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            save(self.checkpoints / entry.file)
        is_best = kept[0] == entry
        if is_best:
            self._copy_atomic(self.checkpoints / entry.file, self.best)
        return kept, is_best

    def prune(self, kept: list[Kept]) -> None:
        """Delete checkpoint files not in `kept`, and temporary files a killed write left behind."""
        names = {x.file for x in kept}
        for f in self.checkpoints.glob("*.pt") if self.checkpoints.exists() else []:
            if f.name not in names:
                f.unlink()
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def _copy_atomic(self, src: Path, dst: Path) -> None:
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))

    # ---- training state ---------------------------------------------------------------------------------------
    def state_path(self, step: int) -> Path:
        return self.states / f"step_{step:08d}.pt"

    def save_last(self, state: dict, save_model: Callable[[Path], None]) -> None:
        """Write the training state for `state['step']`, then last.pt, then drop older states (see module doc)."""
        step = int(state["step"])
        self.path.mkdir(parents=True, exist_ok=True)
        import torch

        atomic_write(self.state_path(step), lambda tmp: torch.save(state, tmp))
        save_model(self.last)
        for old in self.states.glob("step_*.pt"):
            if old.name != self.state_path(step).name:
                old.unlink(missing_ok=True)

    def load_state(self, step: int) -> dict:
        path = self.state_path(step)
        if not path.exists():
            raise FileNotFoundError(f"{path}: the training state for last.pt (step {step}) is missing")
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)

    def reconcile(self, step: int, kept: list[Kept]) -> None:
        """Make the folder agree with the state saved at `step`: what a killed run wrote after it is dropped.

        History records after `step` go (the replay writes them again), checkpoint files not in `kept` go, and best.pt
        is restored from the best kept checkpoint.
        """
        history = self.history()
        if any(r.get("step", 0) > step for r in history):
            write_json(self.history_file, [r for r in history if r.get("step", 0) <= step])
        self.prune(kept)
        if kept:
            self._copy_atomic(self.checkpoints / kept[0].file, self.best)
        else:
            self.best.unlink(missing_ok=True)


def kept_to_state(kept: list[Kept]) -> list[dict]:
    return [asdict(x) for x in kept]


def kept_from_state(values: list[dict]) -> list[Kept]:
    return [Kept(int(v["step"]), float(v["eer"]), str(v["file"])) for v in values]
