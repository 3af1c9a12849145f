"""The run folder of a fine-tuning run, and how it survives being killed at any moment.

Layout of RUN:
    config.json                  the resolved TrainConfig (what --resume reads back)
    performance_history.json     one record per validation: step, lr, train loss, every metric, time
    last.pt, best.pt             backbones in the format embeddings.load_backbone reads (meta: step, epoch, eer, ...);
                                 from --init onnx:FILE, the fine-tuned module's state_dict (arch "onnx")
    init.onnx                    --init onnx:FILE only: a copy of FILE, the graph --resume rebuilds the module from
    best.onnx, last.onnx         --init onnx:FILE only: the fine-tuned weights in FILE's graph and input convention,
                                 checked against torch (`--model onnx:RUN/best.onnx`), written when a run ends
    checkpoints/step_<step>_eer_<eer>.pt   the `keep_best` best by validation EER (older ones deleted)
    state/step_<step>.pt         optimizer, scheduler, scaler, head, data order (epoch, step), RNG states, kept list
    manifest.json                every file above (labels.outputs): RUN must be absent, empty or a run folder, and
                                 only files it lists are ever deleted or replaced; tensorboard/ and wandb/ are the
                                 loggers' own

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
from labels.files import atomic_write, file_sha256, write_json
from labels.outputs import OutputFolder

# torch is imported by the methods that save and load training state only: the review app and
# `curation.evaluate --compare` read run folders without paying for it.

HISTORY_NAME = "performance_history.json"
COMMAND = "curation.train_on_clean"


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
    """Paths and crash-safe writes of one run folder. Every file is listed in RUN/manifest.json before it is written
    (`labels.outputs.OutputFolder`), and only listed files are deleted."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.history_file = self.path / HISTORY_NAME
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.init_onnx = self.path / "init.onnx"
        self.best_onnx = self.path / "best.onnx"
        self.last_onnx = self.path / "last.onnx"
        self.checkpoints = self.path / "checkpoints"
        self.states = self.path / "state"
        self._owned: OutputFolder | None = None

    def check(self) -> None:
        """Refuse (OutputFolderError, before any work) a RUN that is not absent, empty or a run folder of ours."""
        OutputFolder.inspect(self.path, COMMAND)

    @property
    def owned(self) -> OutputFolder:
        """The run folder as an output folder of this tool, claimed (created) at the first write."""
        if self._owned is None:
            self._owned = OutputFolder.claim(self.path, COMMAND)
        return self._owned

    def has_run(self) -> bool:
        """True when a run has already been started here (so a fresh start would mix two runs)."""
        return self.config.exists()

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    def write_config(self, values: dict) -> None:
        self.owned.add(self._rel(self.config))
        write_json(self.config, values)

    def keep_init_onnx(self, source: Path, sha256: str) -> None:
        """Copy the ONNX file a run starts from into RUN/init.onnx (once: a resumed run finds it there), so the run
        folder alone rebuilds the module, whatever becomes of the original file."""
        if self.init_onnx.exists() and file_sha256(self.init_onnx) == sha256:
            return
        self._copy_atomic(source, self.init_onnx)

    def write_file(self, path: Path, write: Callable[[Path], object]) -> None:
        """List `path` (inside RUN) in the manifest, then write it atomically with `write(tmp)`."""
        self.owned.write(self._rel(path), write)

    # ---- history ----------------------------------------------------------------------------------------------
    def history(self) -> list[dict]:
        return read_history(self.history_file) if self.history_file.exists() else []

    def append_history(self, record: dict) -> None:
        """Rewrite the whole file with one more record (it stays small: one record per validation)."""
        self.owned.add(HISTORY_NAME)
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
            self.owned.add(self._rel(self.checkpoints / entry.file))
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            save(self.checkpoints / entry.file)
        is_best = kept[0] == entry
        if is_best:
            self._copy_atomic(self.checkpoints / entry.file, self.best)
        return kept, is_best

    def prune(self, kept: list[Kept]) -> None:
        """Delete the checkpoint files this run wrote that are not in `kept`, and temporaries a killed write left."""
        keep = {self._rel(self.checkpoints / x.file) for x in kept}
        prefix = self._rel(self.checkpoints) + "/"
        self.owned.delete(*(f for f in self.owned.files if f.startswith(prefix) and f not in keep))
        self.owned.remove_temps()

    def _copy_atomic(self, src: Path, dst: Path) -> None:
        self.owned.add(self._rel(dst))
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))

    # ---- training state ---------------------------------------------------------------------------------------
    def state_path(self, step: int) -> Path:
        return self.states / f"step_{step:08d}.pt"

    def save_last(self, state: dict, save_model: Callable[[Path], None]) -> None:
        """Write the training state for `state['step']`, then last.pt, then drop older states (see module doc)."""
        step = int(state["step"])
        import torch

        current = self._rel(self.state_path(step))
        self.owned.write(current, lambda tmp: torch.save(state, tmp))
        self.owned.add(self._rel(self.last))
        save_model(self.last)
        prefix = self._rel(self.states) + "/"
        self.owned.delete(*(f for f in self.owned.files if f.startswith(prefix) and f != current))

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
        elif self._rel(self.best) in self.owned.files:
            self.owned.delete(self._rel(self.best))


def kept_to_state(kept: list[Kept]) -> list[dict]:
    return [asdict(x) for x in kept]


def kept_from_state(values: list[dict]) -> list[Kept]:
    return [Kept(int(v["step"]), float(v["eer"]), str(v["file"])) for v in values]
