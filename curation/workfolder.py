"""The work folder (`--workdir WORK`): where each file lives, and the one reader and writer of the clean's outputs.

Why one home: `curation.clean` writes report.json, flags.csv, clean/nodes.parquet and clean/embeddings.npy; the review
app, the benchmarks and the tests read them back while (or after) a clean runs. Spelling their paths and columns in one
module keeps writer and readers in agreement, and every write here is atomic (`labels.files.atomic_write`), so a
reader never sees half a file and a killed clean leaves the previous outputs whole.

Layout (see ARCHITECTURE.md):
    WORK/labels.sqlite            the label store (labels.store)
    WORK/report.json              the last clean's counts, thresholds, noise estimate, timings
    WORK/flags.csv                one row per open flag of the store, whichever stage raised it (FLAG_COLUMNS)
    WORK/clean/nodes.parquet      one row per image of the last clean (NODE_COLUMNS at least)
    WORK/clean/embeddings.npy     float16 unit rows; row `emb_row` of nodes.parquet (memory-mapped by the app)
    WORK/cache/                   crops and embeddings by content hash (embeddings.cache)

Example:
    >>> work = WorkFolder.open("WORK")                       # refuses a folder without a label store
    >>> report, clean = read_report(work), load_clean(work)  # {} and None before the first clean
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from curation.flagging.graph import one_thread
from labels.cli import UserError
from labels.files import atomic_write, write_json
from labels.store import STORE_NAME, LabelStore

# flags.csv, one row per open flag of the store.
FLAG_COLUMNS = ["image", "identity", "flag", "component", "suggested_identity", "score"]
# The columns of nodes.parquet every reader may rely on (writers may add more, e.g. degree, status, flags).
# component: -1 outside every group, -2 not in the graph (a fake, or no embedding); emb_row: -1 without an embedding.
NODE_COLUMNS = ("image_id", "path", "identity", "is_fake", "component", "sim_to_main", "emb_row")
# Read when present: what decided a deepfake's fake_mismatch.
OPTIONAL_NODE_COLUMNS = ("best_to_main",)
# rows normalised and written at a time: a 10M-photo array never passes through RAM, and a block's temporaries are
# small enough to be reused from block to block (262,144-row blocks took 9.5 s for 1M x 512 rows, these 5.6 s)
_EMBEDDING_BLOCK = 4096


@dataclass(frozen=True)
class WorkFolder:
    """The paths of a work folder."""

    root: Path

    @classmethod
    def open(cls, path: str | Path) -> WorkFolder:
        """An existing work folder: resolve `path` and check it holds the label store (UserError saying how to make
        one otherwise). Commands that create a work folder use `WorkFolder(Path(path))`."""
        root = Path(path).expanduser().resolve()
        if not (root / STORE_NAME).is_file():
            raise UserError(
                f"{root} holds no label store ({STORE_NAME}): run `python -m curation.clean DATA --workdir {root}` first"
            )
        return cls(root)

    store = property(lambda self: self.root / STORE_NAME)
    report = property(lambda self: self.root / "report.json")
    flags = property(lambda self: self.root / "flags.csv")
    clean_dir = property(lambda self: self.root / "clean")
    nodes = property(lambda self: self.root / "clean" / "nodes.parquet")
    embeddings = property(lambda self: self.root / "clean" / "embeddings.npy")
    cache = property(lambda self: self.root / "cache")


# ---- report.json ----------------------------------------------------------------------------------------------------
def read_report(work: WorkFolder) -> dict:
    """The last clean's report.json as a dict ({} before the first clean); UserError when it is unreadable."""
    if not work.report.is_file():
        return {}
    try:
        report = json.loads(work.report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{work.report}: not readable JSON ({exc})") from exc
    if not isinstance(report, dict):
        raise UserError(f"{work.report}: expected a JSON object")
    return report


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_report(work: WorkFolder, report: dict) -> Path:
    """Write report.json (numpy numbers become JSON numbers, non-finite floats null)."""
    return write_json(work.report, report, default=_json_default)


# ---- flags.csv ------------------------------------------------------------------------------------------------------
def write_flags(work: WorkFolder, store: LabelStore) -> pd.DataFrame:
    """Write flags.csv from the store: every open flag, whichever stage raised it (ingest's unreadable files and exact
    duplicates as well as the clean's), in the store's order; returns the table as written.

    Read back from the store rather than handed over by a stage, so that flags.csv is always exactly what a reviewer
    has left to answer, whichever stages ran and in whatever order.
    """
    flags = store.flags(
        status="open", columns=("image", "identity", "kind", "component", "suggested_identity", "score")
    )
    table = pd.DataFrame(
        {
            "image": flags["image"].fillna("").astype(str),
            "identity": flags["identity"].astype(str),
            "flag": flags["kind"].astype(str),
            "component": flags["component"].astype("Int64"),
            "suggested_identity": flags["suggested_identity"].fillna("").astype(str),
            "score": flags["score"].astype(float),
        },
        columns=FLAG_COLUMNS,
    )
    atomic_write(work.flags, lambda tmp: table.to_csv(tmp, index=False))
    return table


def read_flags(work: WorkFolder) -> pd.DataFrame:
    """flags.csv as written (text columns as text, component as a nullable integer); empty before the first clean."""
    if not work.flags.is_file():
        return pd.DataFrame(columns=FLAG_COLUMNS)
    return pd.read_csv(work.flags, dtype={"image": str, "identity": str, "flag": str, "suggested_identity": str},
                       keep_default_na=False, na_values={"component": [""], "score": [""]}).astype({"component": "Int64"})


# ---- clean/nodes.parquet and clean/embeddings.npy ------------------------------------------------------------------
def write_nodes(work: WorkFolder, nodes: pd.DataFrame) -> Path:
    """Write nodes.parquet; it must hold NODE_COLUMNS (any further columns are written too)."""
    missing = [c for c in NODE_COLUMNS if c not in nodes.columns]
    if missing:
        raise ValueError(f"nodes lack column(s) {', '.join(missing)}")
    return atomic_write(work.nodes, lambda tmp: nodes.to_parquet(tmp, index=False))


@one_thread
def write_embeddings(work: WorkFolder, emb: np.ndarray, rows: np.ndarray | None = None) -> Path:
    """Write rows `rows` of `emb` (all rows when None) as float16 unit vectors, block by block.

    Unit rows because precomputed embeddings may hold raw features: the app's dot products must be cosines. `emb`
    may be a memory map; it is read one block at a time, so a 10M x 512 array never passes through RAM. float16 is
    widened and narrowed by torch (the CPU's conversion instructions: ~8x numpy's, the same IEEE rounding).
    """
    n = emb.shape[0] if rows is None else len(rows)

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, "w+", np.float16, (n, emb.shape[1]))
        for s in range(0, n, _EMBEDDING_BLOCK):
            part = emb[s : s + _EMBEDDING_BLOCK] if rows is None else emb[np.asarray(rows[s : s + _EMBEDDING_BLOCK])]
            part = torch.from_numpy(np.ascontiguousarray(part)).float().numpy()
            unit = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
            out[s : s + len(part)] = torch.from_numpy(unit).half().numpy()
        out.flush()
        del out

    return atomic_write(work.embeddings, write)


@dataclass(frozen=True)
class CleanResult:
    """The last clean's per-image table (indexed by image_id) and its embeddings, memory-mapped (read on demand)."""

    nodes: pd.DataFrame
    embeddings: np.ndarray | None


def load_clean(work: WorkFolder) -> CleanResult | None:
    """Read nodes.parquet (only the columns the app needs) and memory-map embeddings.npy; None before the first clean.

    Loading 1,000,000 nodes takes a fraction of a second and ~50 MB, so the app does it once per file version
    (cache it keyed by `clean_version(work)`); the embeddings stay on disk and only an identity's rows are read.
    """
    if not work.nodes.is_file():
        return None
    columns = [c for c in NODE_COLUMNS if c != "path"]
    try:
        schema = pq.read_schema(work.nodes)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise UserError(f"{work.nodes}: missing column(s) {', '.join(missing)}; re-run `python -m curation.clean`")
        optional = [c for c in OPTIONAL_NODE_COLUMNS if c in schema.names]
        nodes = pq.read_table(work.nodes, columns=[*columns, *optional]).to_pandas()
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a corrupt file
        raise UserError(f"{work.nodes}: not a readable parquet file ({exc})") from exc
    nodes = nodes.set_index("image_id").sort_index()
    nodes["emb_row"] = nodes["emb_row"].where(nodes["emb_row"] >= 0)  # -1 or null: no embedding (unreadable, no face)
    embeddings = None
    if work.embeddings.is_file():
        try:
            embeddings = np.load(work.embeddings, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise UserError(f"{work.embeddings}: not a readable .npy file ({exc})") from exc
        rows = nodes["emb_row"].dropna()
        if embeddings.ndim != 2 or (len(rows) and int(rows.max()) >= embeddings.shape[0]):
            raise UserError(
                f"{work.embeddings}: shape {embeddings.shape} does not match nodes.parquet (emb_row up to"
                f" {int(rows.max()) if len(rows) else '-'}); re-run `python -m curation.clean`"
            )
    return CleanResult(nodes, embeddings)


def clean_version(work: WorkFolder) -> tuple:
    """A cache key that changes whenever a clean rewrites its outputs (modification times and sizes)."""
    out = []
    for p in (work.nodes, work.embeddings, work.report):
        st = p.stat() if p.exists() else None
        out.append((st.st_mtime_ns, st.st_size) if st else None)
    return tuple(out)


# ---- folders typed by a person --------------------------------------------------------------------------------------
def contained_folder(text: str, *, work: WorkFolder, cwd: Path | None = None) -> Path:
    """Resolve a folder typed in the app; only folders under the work folder or the current directory are accepted.

    Relative paths are taken from the current directory. Raises UserError for anything else, so a text box cannot
    make the app read or write elsewhere on the machine.
    """
    cwd = (cwd or Path.cwd()).resolve()
    text = (text or "").strip()
    if not text:
        raise UserError("type a folder")
    full = (cwd / Path(text).expanduser()).resolve()
    if not (full.is_relative_to(work.root) or full.is_relative_to(cwd)):
        raise UserError(f"{full} is outside the work folder ({work.root}) and the current directory ({cwd})")
    return full
