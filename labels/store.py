"""The label store: one SQLite file in the work folder that every stage reads and writes.

Why SQLite: reviewers, the cleaning run and export touch the same labels, sometimes at the same time, and a reviewer's
decisions must survive a crash of any of them. WAL mode lets readers go on while one writer commits; every multi-row
change is one `BEGIN IMMEDIATE` transaction, so two writers queue instead of losing each other's rows.

Three kinds of rows:
- images: what ingest found (path relative to the dataset root, sha256, size, dimensions, identity and real/fake as found,
  readability) plus the *current* label (identity, is_fake, removed).
- decisions: an append-only log (SQLite triggers refuse UPDATE and DELETE). Each decision records, per image it touched,
  the label before and after. The current label of an image is the `after` of the last decision that touched it, or the
  label as found when none did; `rebuild()` re-derives it from the log, and the stored columns are only a cache of that.
  Undo is a new decision that puts back the `before` of the one it reverses.
- flags: proposals written by later stages (see labels.vocab). A flag is open until a decision answers it; undoing that
  decision reopens it.

Example:
    >>> store = LabelStore.open(workdir)
    >>> did = store.decide("move", reviewer="ana", image_ids=[12], target_identity="000042")
    >>> store.undo(did, reviewer="ana")
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from itertools import repeat
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from labels.cli import UserError
from labels.vocab import FLAG_KINDS, check_action, check_kind

STORE_NAME = "labels.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS images(
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,          -- relative to the dataset root, '/'-separated
    sha256 TEXT,                        -- NULL only when the file could not be read at all
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    identity_found TEXT NOT NULL,
    fake_found INTEGER NOT NULL DEFAULT 0,
    problem TEXT,                       -- NULL when readable, else why not
    present INTEGER NOT NULL DEFAULT 1, -- 0 once a re-ingest no longer finds the file
    identity TEXT NOT NULL,             -- current label: derived from the found label and the decision log
    is_fake INTEGER NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS images_identity ON images(identity);
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);

CREATE TABLE IF NOT EXISTS flags(
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: an id a reviewer or a manifest cites stays that flag's
    source TEXT NOT NULL,               -- the stage that wrote it ('ingest', 'clean', ...)
    kind TEXT NOT NULL,
    image_id INTEGER REFERENCES images(id),   -- NULL for identity-level flags (split, merge)
    identity TEXT NOT NULL,
    suggested_identity TEXT,
    component INTEGER,
    score REAL,
    details TEXT NOT NULL DEFAULT '{}', -- JSON, kind-specific (e.g. duplicate_of)
    status TEXT NOT NULL DEFAULT 'open',-- 'open' | 'resolved', derived from the decision log
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_status_kind ON flags(status, kind);
CREATE INDEX IF NOT EXISTS flags_open_by_identity ON flags(status, identity, kind, score);  -- the review queue, covered
CREATE INDEX IF NOT EXISTS flags_identity ON flags(identity);
CREATE INDEX IF NOT EXISTS flags_image ON flags(image_id);

CREATE TABLE IF NOT EXISTS decisions(
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    action TEXT NOT NULL,
    identity TEXT,                      -- merge: the identity merged away
    target_identity TEXT,               -- move / merge: where the photos go
    undoes INTEGER REFERENCES decisions(id),
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS decision_images(
    decision_id INTEGER NOT NULL REFERENCES decisions(id),
    image_id INTEGER NOT NULL REFERENCES images(id),
    before_identity TEXT NOT NULL, before_fake INTEGER NOT NULL, before_removed INTEGER NOT NULL,
    after_identity TEXT NOT NULL, after_fake INTEGER NOT NULL, after_removed INTEGER NOT NULL,
    PRIMARY KEY(decision_id, image_id)
);
CREATE INDEX IF NOT EXISTS decision_images_image ON decision_images(image_id, decision_id);
CREATE INDEX IF NOT EXISTS decisions_undoes ON decisions(undoes);  -- "is it undone?", asked by undo and history
CREATE TABLE IF NOT EXISTS decision_flags(
    decision_id INTEGER NOT NULL REFERENCES decisions(id),
    flag_id INTEGER NOT NULL REFERENCES flags(id),
    PRIMARY KEY(decision_id, flag_id)
);
CREATE INDEX IF NOT EXISTS decision_flags_flag ON decision_flags(flag_id);

-- decisions recorded together as one request ("accept all suggestions here"): batch = the first decision's id
CREATE TABLE IF NOT EXISTS decision_batches(
    decision_id INTEGER PRIMARY KEY REFERENCES decisions(id),
    batch INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS decision_batches_batch ON decision_batches(batch);

"""

# The decision log's tables are append-only: the database itself refuses an UPDATE or DELETE of their rows.
_APPEND_ONLY = ("decisions", "decision_images", "decision_flags", "decision_batches")
_SCHEMA += "".join(
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}\n"
    "BEGIN SELECT RAISE(ABORT, 'the decision log is append-only'); END;\n"
    for table in _APPEND_ONLY for op in ("UPDATE", "DELETE")
)

# Flags whose decision has not been undone count as answered.
_LIVE_DECISION = "d.id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL)"
# The live decisions (not undone, not undos themselves) after decision `di1.decision_id` that touched one of its photos:
# what undoing it would override. Decided from the log, not by comparing labels: a photo can be back in the state a
# decision left it in although someone decided on it since (removed, restored, removed again).
_LATER_LIVE = (
    "FROM decision_images di1 JOIN decision_images di2 ON di2.image_id=di1.image_id AND di2.decision_id>di1.decision_id"
    " JOIN decisions d ON d.id=di2.decision_id"
    f" WHERE d.action<>'undo' AND {_LIVE_DECISION}"
)


class StoreError(UserError):
    """A request the store refuses; the message says why in words a reviewer understands."""


class UndoConflict(StoreError):
    """Undoing would override a later live decision on one of the same photos."""


@dataclass(frozen=True)
class FoundImage:
    """One file as ingest found it."""

    path: str
    size: int
    mtime_ns: int
    identity: str
    is_fake: bool = False
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    problem: str | None = None


class KnownFile(NamedTuple):
    """An ingested file as the store holds it (see `LabelStore.known_files`)."""

    size: int
    mtime_ns: int
    sha256: str | None
    problem: str | None
    width: int | None
    height: int | None
    identity_found: str
    fake_found: bool
    present: bool


@dataclass(frozen=True)
class NewFlag:
    """A proposal from a stage; `image_path` (relative, as ingested) is None for identity-level flags."""

    kind: str
    identity: str
    image_path: str | None = None
    suggested_identity: str | None = None
    component: int | None = None
    score: float | None = None
    details: dict = field(default_factory=dict)


NEW_FLAG_FIELDS = tuple(f.name for f in fields(NewFlag))  # the columns of LabelStore.replace_flag_columns


@dataclass(frozen=True)
class Decision:
    id: int
    ts: str
    reviewer: str
    action: str
    identity: str | None
    target_identity: str | None
    undoes: int | None
    note: str
    image_ids: tuple[int, ...]
    flag_ids: tuple[int, ...]
    undone_by: int | None
    blocked_by: int | None = None  # the latest later live decision on one of its photos: undo that one first
    batch: int | None = None  # decisions recorded together (decide_many / undo_many) share the first one's id

    @property
    def undoable(self) -> bool:
        """What `LabelStore.undo` would accept now (as of the read that made this entry)."""
        return self.action != "undo" and self.undone_by is None and self.blocked_by is None

    def describe(self) -> str:
        """One line for a history panel."""
        n = len(self.image_ids)
        what = {
            "move": f"moved {n} photo(s) to {self.target_identity}",
            "merge": f"merged {self.identity} into {self.target_identity} ({n} photos)",
            "keep": f"kept (rejected {len(self.flag_ids)} flag(s))",
            "undo": f"undid decision #{self.undoes}",
        }.get(self.action, f"{self.action.replace('_', ' ')} {n} photo(s)")
        undone = f" [undone by #{self.undone_by}]" if self.undone_by else ""
        return f"#{self.id} {self.ts[:19].replace('T', ' ')} {self.reviewer}: {what}{undone}"


@dataclass(frozen=True)
class DecisionRequest:
    """One decision of `LabelStore.decide_many`; the fields mean what `LabelStore.decide`'s arguments mean."""

    action: str
    image_ids: tuple[int, ...] = ()
    identity: str | None = None
    target_identity: str | None = None
    flag_ids: tuple[int, ...] | None = None
    note: str = ""


_RESERVED_NAMES = ("", ".", "..")
_PATH_CHARACTERS = re.compile(r"[/\\\x00]")  # a name holding one of these is a path, not one folder name


def check_identity_name(name: str) -> str:
    """Identities become folder names on export, so they must be one safe path component."""
    name = (name or "").strip()
    if name in _RESERVED_NAMES or _PATH_CHARACTERS.search(name):
        raise StoreError(f"{name!r} is not a usable identity name (it must be one folder name, not a path)")
    return name


def usable_identity_names(names: pd.Series) -> np.ndarray:
    """Per name, whether `check_identity_name` accepts it (bool array): the same rule on a million names at once."""
    stripped = names.fillna("").astype(str).str.strip()
    bad = stripped.isin(_RESERVED_NAMES) | stripped.str.contains(_PATH_CHARACTERS.pattern, regex=True)
    return ~bad.to_numpy(bool)


def _batch(db: sqlite3.Connection, ids: list[int]) -> list[int]:
    """Mark decisions just recorded as one batch (named by the first id); returns them."""
    db.executemany("INSERT INTO decision_batches VALUES(?, ?)", [(d, ids[0]) for d in ids])
    return ids


def _reviewer(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise StoreError("a decision needs a reviewer name")
    return name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class LabelStore:
    """A connection to `WORK/labels.sqlite`. Cheap to open; open one per process or per UI session."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._resolved_root: tuple[Path | None, Path | None] = (None, None)
        self._flag_rows: tuple[tuple, pd.DataFrame] | None = None  # see flag_answers
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._lock:  # executescript commits any open transaction, so the script brings its own
                self._db.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA}; INSERT OR IGNORE INTO meta VALUES('schema_version', '{SCHEMA_VERSION}');"
                    " COMMIT;"
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable label store ({exc})") from exc
        version = int(self.get_meta("schema_version", "0"))
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: label store schema {version}, this version reads {SCHEMA_VERSION}")

    @classmethod
    def open(cls, workdir: str | Path) -> LabelStore:
        return cls(Path(workdir) / STORE_NAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        """One write transaction; it takes the write lock at once so concurrent writers queue, never interleave."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def snapshot(self):
        """Reads inside see one state of the store while other processes go on writing (WAL); for multi-query views
        such as export, which must not pair labels from before a decision with its history from after it."""
        with self._lock:
            if self._db.in_transaction:  # nested: the outer snapshot already holds one state
                yield self
                return
            self._db.execute("BEGIN")
            try:
                yield self
            finally:
                self._db.execute("COMMIT")

    def _frame(self, sql: str, params: Sequence | dict = ()) -> pd.DataFrame:
        """A read into a DataFrame, on this connection (so inside `snapshot()` it sees the snapshot's state).

        Private on purpose: the schema is this module's business, every view the rest of the project needs is a named
        method below, so no SQL lives outside labels/.
        """
        with self._lock:
            cursor = self._db.cursor()
            cursor.row_factory = None  # plain tuples: a sqlite3.Row per row cost a fifth of reading a million images
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        # what pd.read_sql_query builds from the same rows (it goes through from_records too)
        return pd.DataFrame.from_records(rows, columns=[d[0] for d in cursor.description], coerce_float=True)

    def version(self) -> tuple[int, int, int]:
        """A cheap cache key for anything derived from the store: (last decision, last flag, number of flags).

        Decisions and flags are the only things that change what a page shows; ids are never reused, so an equal key
        means equal contents (a new clean that replaced open flags changes the last flag id or the count)."""
        row = self._db.execute(
            "SELECT (SELECT IFNULL(MAX(id), 0) FROM decisions), (SELECT IFNULL(MAX(id), 0) FROM flags),"
            " (SELECT COUNT(*) FROM flags)"
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    # ---- meta ---------------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, **values: str) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta VALUES(?, ?)", [(k, str(v)) for k, v in values.items()])

    @property
    def dataset_root(self) -> Path:
        root = self.get_meta("dataset_root")
        if root is None:
            raise StoreError(f"{self.path}: nothing ingested yet (run `python -m labels.ingest DATA --workdir WORK`)")
        return Path(root)

    def resolve(self, rel_path: str) -> Path:
        """Absolute path of an ingested image; refuses anything that would leave the dataset root."""
        recorded = self.dataset_root
        if self._resolved_root[0] != recorded:  # resolving the root once, not per photo, matters at 100k photos
            self._resolved_root = (recorded, recorded.resolve())
        root = self._resolved_root[1]
        full = (root / rel_path).resolve()
        if not full.is_relative_to(root):
            raise StoreError(f"{rel_path!r} points outside the dataset {root}")
        return full

    # ---- images (written by ingest) -----------------------------------------------------------------------------
    def known_files(self) -> dict[str, KnownFile]:
        """path -> what ingest recorded for every image so far (present or not): what lets re-ingest skip hashing."""
        rows = self._db.execute(
            "SELECT path, size, mtime_ns, sha256, problem, width, height, identity_found, fake_found, present"
            " FROM images"
        ).fetchall()
        return {r[0]: KnownFile(r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9])) for r in rows}

    def add_images(self, found: Iterable[FoundImage]) -> tuple[int, int]:
        """Insert new files and refresh changed ones in one transaction; returns (added, updated).

        The current label follows the found label only for images no decision has touched, so a re-ingest never undoes
        a reviewer's work. Written with one prepared statement per kind of change (a million index rows: seconds, not
        the minutes of a statement per row); a path listed twice ends with its last values, as row-by-row writes would.
        """
        return self._add_rows(
            [(f.sha256, f.size, f.mtime_ns, f.width, f.height, f.identity, int(f.is_fake), f.problem, f.path)
             for f in found]
        )

    def add_index_images(
        self, paths: Sequence[str], identities: Sequence[str], is_fake: Sequence[bool]
    ) -> tuple[int, int]:
        """`add_images` for photos listed by an index (precomputed embeddings), given as columns: no file is read, so
        each has size 0, no hash and no size in pixels. Returns (added, updated).

        Why columns: a million FoundImage objects cost more than the insert itself; rows zipped from columns are built
        in C.
        """
        n = len(paths)
        if not len(identities) == len(is_fake) == n:
            raise ValueError(f"{n} paths but {len(identities)} identities and {len(is_fake)} fake marks")
        fakes = np.asarray(is_fake, bool).astype(np.int64).tolist()
        none, zero = (lambda: repeat(None, n)), (lambda: repeat(0, n))  # one iterator per column: zip draws from each
        return self._add_rows(list(zip(none(), zero(), zero(), none(), none(), identities, fakes, none(), paths)))

    def _add_rows(self, found: list[tuple]) -> tuple[int, int]:
        """add_images on rows (sha256, size, mtime_ns, width, height, identity, is_fake as 0/1, problem, path)."""
        with self.transaction() as db:
            known: dict[str, int] = {}
            touched: set[int] = set()
            if not self.is_empty():  # else every row is new
                touched = {r[0] for r in db.execute("SELECT DISTINCT image_id FROM decision_images")}
                for chunk in _chunks(list({f[8]: None for f in found})):
                    known.update(db.execute(f"SELECT path, id FROM images WHERE path IN ({_marks(chunk)})", chunk))
            # first appearance order = id order, as one insert per row would give; a repeated path keeps its last values
            new = {f[8]: f for f in found if f[8] not in known}
            added = len(new)
            updated = len(found) - added
            refresh = [(*f[:8], known[f[8]]) for f in found if f[8] in known]
            relabel = [(f[5], f[6], i) for *f, i in refresh if i not in touched]
            db.executemany(
                "INSERT INTO images(sha256, size, mtime_ns, width, height, identity_found, fake_found, problem,"
                " path, identity, is_fake) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?6,?7)",
                new.values(),
            )
            db.executemany(
                "UPDATE images SET sha256=?, size=?, mtime_ns=?, width=?, height=?, identity_found=?, fake_found=?,"
                " problem=?, present=1 WHERE id=?",
                refresh,
            )
            db.executemany("UPDATE images SET identity=?, is_fake=? WHERE id=?", relabel)
        return added, updated

    def is_empty(self) -> bool:
        """No image was ever added: the next add numbers its new images 1, 2, ... in the order it lists them (SQLite
        gives a new row one more than the largest id, and images are never deleted)."""
        return self._db.execute("SELECT 1 FROM images LIMIT 1").fetchone() is None

    def mark_missing(self, paths: Iterable[str]) -> int:
        """Files a re-ingest no longer finds: kept with their history, left out of export."""
        with self.transaction() as db:
            return sum(db.execute("UPDATE images SET present=0 WHERE path=? AND present=1", (p,)).rowcount for p in paths)

    _IMAGE_COLUMNS = (
        "id, path, sha256, size, width, height, identity_found, fake_found, problem, present, identity, is_fake, removed"
    )

    def images(
        self,
        *,
        identity: str | None = None,
        ids: Sequence[int] | None = None,
        present_only: bool = True,
        readable_only: bool = False,
        include_removed: bool = True,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Images with their found and current labels, ordered by id; the filters combine with AND.

        columns: only these of the table's columns, id always among them (default all); a clean reads its million rows
        in half the time with the five it needs.
        """
        names = self._IMAGE_COLUMNS.split(", ")
        unknown = [c for c in columns or () if c not in names]
        if unknown:
            raise ValueError(f"unknown image column(s) {', '.join(unknown)}; the columns are {', '.join(names)}")
        selected = ", ".join(["id", *(c for c in columns if c != "id")]) if columns else self._IMAGE_COLUMNS
        where, params = [], []
        if identity is not None:
            where.append("identity=?")
            params.append(identity)
        if present_only:
            where.append("present=1")
        if readable_only:
            where.append("problem IS NULL")
        if not include_removed:
            where.append("removed=0")
        sql = f"SELECT {selected} FROM images WHERE " + " AND ".join(where or ["1"])
        if ids is None:
            return self._frame(sql + " ORDER BY id", params)
        parts = [self._frame(f"{sql} AND id IN ({_marks(c)})", [*params, *c]) for c in _chunks([int(i) for i in ids])]
        if not parts:
            return self._frame(sql + " AND 0", params)
        return pd.concat(parts).sort_values("id").reset_index(drop=True)

    def image_ids(self, paths: Sequence[str]) -> dict[str, int]:
        """path -> id for the given ingested paths (unknown paths are absent from the result)."""
        out = {}
        for p in paths:
            row = self._db.execute("SELECT id FROM images WHERE path=?", (p,)).fetchone()
            if row:
                out[p] = row[0]
        return out

    def identities(self) -> pd.DataFrame:
        """One row per current identity: photo counts (real, fake, removed) and open flags."""
        return self._frame(
            "SELECT i.identity, COUNT(*) AS n_images,"
            " SUM(i.is_fake=0 AND i.removed=0) AS n_real, SUM(i.is_fake=1 AND i.removed=0) AS n_fake,"
            " SUM(i.removed) AS n_removed,"
            " (SELECT COUNT(*) FROM flags f WHERE f.identity=i.identity AND f.status='open') AS n_open_flags"
            " FROM images i WHERE i.present=1 GROUP BY i.identity ORDER BY i.identity"
        )

    def identity_exists(self, name: str) -> bool:
        """Whether any photo (present or not) is labelled `name` now: what a new identity's name must avoid."""
        return self._db.execute("SELECT 1 FROM images WHERE identity=? LIMIT 1", (name,)).fetchone() is not None

    def identity_names(self, *, prefix: str | None = None, containing: str | None = None, limit: int = 20) -> list[str]:
        """Current identity names starting with `prefix` (an index range: fast at any size, case-sensitive) or
        containing `containing` (case-insensitive for ASCII, LIKE wildcards taken literally), in name order."""
        if prefix is not None:
            rows = self._db.execute(
                "SELECT DISTINCT identity FROM images WHERE identity >= ? AND identity < ? ORDER BY identity LIMIT ?",
                (prefix, prefix + "\U0010ffff", int(limit)),
            )
        elif containing is not None:
            rows = self._db.execute(
                "SELECT DISTINCT identity FROM images WHERE identity LIKE ? ESCAPE '\\' ORDER BY identity LIMIT ?",
                (_like(containing), int(limit)),
            )
        else:
            rows = self._db.execute("SELECT DISTINCT identity FROM images ORDER BY identity LIMIT ?", (int(limit),))
        return [r[0] for r in rows]

    def find_images(self, containing: str, *, limit: int = 50) -> pd.DataFrame:
        """Present photos whose path contains `containing` (case-insensitive for ASCII, wildcards literal), by id.

        Columns: image_id, path, identity (current)."""
        return self._frame(
            "SELECT id AS image_id, path, identity FROM images WHERE present=1 AND path LIKE ? ESCAPE '\\'"
            " ORDER BY id LIMIT ?",
            [_like(containing), int(limit)],
        )

    def photo_counts(self, identities: Sequence[str]) -> dict[str, int]:
        """identity -> present photos labelled with it now (removed ones included); absent names are left out."""
        out: dict[str, int] = {}
        names = list(identities)
        for chunk in _chunks(names):
            out.update(
                self._db.execute(
                    f"SELECT identity, COUNT(*) FROM images WHERE present=1 AND identity IN ({_marks(chunk)})"
                    " GROUP BY identity",
                    chunk,
                ).fetchall()
            )
        return out

    def totals(self) -> dict[str, int]:
        """Whole-store counts for summaries: photos (present), removed (of those), identities (with a photo that is
        present and not removed), decisions (every entry of the log, undos included)."""
        photos, removed = self._db.execute(
            "SELECT COUNT(*), IFNULL(SUM(removed), 0) FROM images WHERE present=1"
        ).fetchone()
        identities = self._db.execute(
            "SELECT COUNT(DISTINCT identity) FROM images WHERE present=1 AND removed=0"
        ).fetchone()[0]
        decisions = self._db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        return {"photos": int(photos), "removed": int(removed), "identities": int(identities),
                "decisions": int(decisions)}

    # ---- flags --------------------------------------------------------------------------------------------------
    def replace_flags(self, source: str, flags: Iterable[NewFlag]) -> int:
        """Replace the open flags a stage wrote before with a new set, in one transaction; returns how many were added.

        Flags a decision ever answered stay (they carry the history of decisions); a new flag identical to one of them
        (same kind, image, identity and suggestion) is not raised again, so a re-run does not undo a reviewer's 'keep',
        nor doubles a flag whose answer was undone (that one is open again already).
        """
        flags = list(flags)
        return self.replace_flag_columns(source, {name: [getattr(f, name) for f in flags] for name in NEW_FLAG_FIELDS})

    def replace_flag_columns(self, source: str, columns: Mapping[str, Sequence]) -> int:
        """`replace_flags` for flags given as columns: one equal-length sequence per NewFlag field (lists or arrays;
        None, NaN or NA where a field is empty, details as dicts).

        Why columns: a clean of ten million photos raises half a million flags, and a NewFlag object, a json.dumps call
        and a row tuple each per flag cost more than the insert itself; here each column is converted in one pass.
        """
        missing = [name for name in NEW_FLAG_FIELDS if name not in columns]
        if missing:
            raise ValueError(f"flag columns lack {', '.join(missing)} (expected {', '.join(NEW_FLAG_FIELDS)})")
        n = len(columns["kind"])
        if any(len(columns[name]) != n for name in NEW_FLAG_FIELDS):
            raise ValueError("flag columns of different lengths: " + ", ".join(
                f"{name} {len(columns[name])}" for name in NEW_FLAG_FIELDS))
        kinds = [str(k) for k in columns["kind"]]
        bad_kind = next((i for i, k in enumerate(kinds) if k not in FLAG_KINDS), n)
        paths = _nullable(columns["image_path"])
        suggested = _nullable(columns["suggested_identity"])
        component = [None if c is None else int(c) for c in _nullable(columns["component"])]
        score = [None if x is None else float(x) for x in _nullable(columns["score"])]
        encode = json.JSONEncoder(sort_keys=True).encode  # what json.dumps(d, sort_keys=True) calls, built once
        details = [encode(d) for d in columns["details"]]
        identities = list(columns["identity"])
        now = _now()
        with self.transaction() as db:
            db.execute(
                "DELETE FROM flags WHERE source=? AND status='open' AND id NOT IN (SELECT flag_id FROM decision_flags)",
                (source,),
            )
            answered = {
                (r[0], r[1], r[2], r[3])
                for r in db.execute(
                    "SELECT kind, image_id, identity, suggested_identity FROM flags WHERE source=?", (source,)
                )
            }
            path_ids: dict[str, int] = {}  # only the flagged photos' ids: a clean flags a few percent of its photos
            for chunk in _chunks(list({p: None for p in paths if p is not None})):
                path_ids.update(db.execute(f"SELECT path, id FROM images WHERE path IN ({_marks(chunk)})", chunk))
            image_ids = [None if p is None else path_ids.get(p, -1) for p in paths]
            unknown = next((i for i, j in enumerate(image_ids) if j == -1), n)
            if bad_kind < n and bad_kind <= unknown:  # the first problem in flag order, as flag-by-flag checks find it
                check_kind(kinds[bad_kind])
            if unknown < n:
                raise StoreError(f"flag {kinds[unknown]} names {paths[unknown]!r}, which was never ingested")
            rows = zip(repeat(source), kinds, image_ids, identities, suggested, component, score, details, repeat(now))
            if answered:
                rows = (r for r in rows if (r[1], r[2], r[3], r[4]) not in answered)
            return _insert_flags(db, rows)

    _FLAG_COLUMNS = {
        name: "i.path AS image" if name == "image" else f"f.{name}"
        for name in ("id", "source", "kind", "image_id", "image", "identity", "suggested_identity", "component",
                     "score", "details", "status", "created")
    }

    def flags(
        self,
        *,
        status: str | None = None,
        kind: str | Sequence[str] | None = None,
        identity: str | None = None,
        image_ids: Sequence[int] | None = None,
        limit: int | None = None,
        offset: int = 0,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Flags with the image path joined in, newest stage first then by id.

        columns: only these (default all of _FLAG_COLUMNS); flags.csv of a clean with half a million flags is written
        from six of them, without reading back every flag's details.
        """
        unknown = [c for c in columns or () if c not in self._FLAG_COLUMNS]
        if unknown:
            raise ValueError(f"unknown flag column(s) {', '.join(unknown)}; the columns are "
                             f"{', '.join(self._FLAG_COLUMNS)}")
        where, params = [], []
        if status is not None:
            where.append("f.status=?")
            params.append(status)
        if kind is not None:
            kinds = [kind] if isinstance(kind, str) else list(kind)
            where.append(f"f.kind IN ({','.join('?' * len(kinds))})")
            params.extend(check_kind(k) for k in kinds)
        if identity is not None:
            where.append("(f.identity=? OR f.suggested_identity=?)")
            params.extend([identity, identity])
        if image_ids is not None:
            ids = [int(i) for i in image_ids]
            where.append(f"f.image_id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        selected = ", ".join(self._FLAG_COLUMNS[c] for c in columns or self._FLAG_COLUMNS)
        sql = f"SELECT {selected} FROM flags f LEFT JOIN images i ON i.id=f.image_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY f.id"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        return self._frame(sql, params)

    def flag_counts(self) -> pd.DataFrame:
        """kind x status counts, for summaries and the overview page."""
        return self._frame("SELECT kind, status, COUNT(*) AS n FROM flags GROUP BY kind, status ORDER BY kind, status")

    def open_flag_scores(
        self, *, kinds: Sequence[str] | None = None, identities: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The open flags as (identity, kind, score) rows only: what ranking the review queue needs, read through the
        covering index flags_open_by_identity without touching the table. `kinds` / `identities` filter."""
        where, params = self._open_where(kinds, None)
        if identities is None:
            return self._frame(f"SELECT identity, kind, score FROM flags WHERE {where}", params)
        names = list(identities)
        parts = [
            self._frame(f"SELECT identity, kind, score FROM flags WHERE {where} AND identity IN ({_marks(c)})",
                        [*params, *c])
            for c in _chunks(names)
        ]
        return pd.concat(parts, ignore_index=True) if parts else self._frame(
            f"SELECT identity, kind, score FROM flags WHERE {where} AND 0", params
        )

    def flag_answers(self) -> pd.DataFrame:
        """Every flag with the decision that answers it now (the latest live one), for labels.estimate.

        Columns: id, identity, image_id (None for identity-level flags), kind, score, status, action / reviewer /
        decision_id / decided (None while open). Why the flags' own columns are kept between calls: only a new clean
        changes them (and then the last flag id or the count, see `version`), while answers change with every decision;
        reading 100,000 flags again per decision would cost the information queue a second each time.
        """
        with self.snapshot():
            key = self.version()[1:]
            if self._flag_rows is None or self._flag_rows[0] != key:
                self._flag_rows = (key, self._frame("SELECT id, identity, image_id, kind, score FROM flags ORDER BY id"))
            answers = self._frame(
                "SELECT df.flag_id AS id, d.action, d.reviewer, d.id AS decision_id, d.ts AS decided"
                f" FROM decision_flags df JOIN decisions d ON d.id=df.decision_id WHERE {_LIVE_DECISION}"
                " ORDER BY df.decision_id"
            )
        answers = answers.drop_duplicates("id", keep="last")  # the latest live answer
        out = self._flag_rows[1].merge(answers, on="id", how="left")
        out.insert(5, "status", np.where(out.decision_id.notna(), "resolved", "open"))  # what `rebuild` derives too
        return out

    def decision_times(self) -> pd.DataFrame:
        """reviewer, ts (ISO, UTC) of every decision, oldest first: what reviewer throughput is computed from."""
        return self._frame("SELECT reviewer, ts FROM decisions ORDER BY id")

    def open_flag_counts(self, identities: Sequence[str], *, kinds: Sequence[str] | None = None) -> pd.DataFrame:
        """Open flags per (identity, kind) for a few identities (the identity a flag is raised on, not a suggestion).

        Columns: identity, kind, n."""
        where, params = self._open_where(kinds, None)
        names = list(identities)
        parts = [
            self._frame(
                f"SELECT identity, kind, COUNT(*) AS n FROM flags WHERE {where} AND identity IN ({_marks(c)})"
                " GROUP BY identity, kind",
                [*params, *c],
            )
            for c in _chunks(names)
        ]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["identity", "kind", "n"])

    def identity_flags(self, identity: str) -> pd.DataFrame:
        """Open identity-level flags (split, merge) that name `identity` on either side, by id.

        Columns: id, kind, identity, suggested_identity, component, score, details."""
        cols = "id, kind, identity, suggested_identity, component, score, details"
        return self._frame(  # two indexed lookups, not an OR that scans every flag
            f"SELECT {cols} FROM flags WHERE status='open' AND image_id IS NULL AND identity=?"
            f" UNION SELECT {cols} FROM flags WHERE status='open' AND kind='merge' AND suggested_identity=? ORDER BY id",
            [identity, identity],
        )

    def identities_answered_since(self, decision_id: int) -> list[str]:
        """Identities (as the flags name them) whose flags decisions after `decision_id` answered, or reopened by
        undoing an earlier decision: what an incremental view has to recompute after those decisions."""
        rows = self._db.execute(
            "SELECT f.identity FROM decision_flags df JOIN flags f ON f.id=df.flag_id WHERE df.decision_id > ?"
            " UNION SELECT f.identity FROM decision_flags df JOIN flags f ON f.id=df.flag_id"
            " WHERE df.decision_id IN (SELECT undoes FROM decisions WHERE id > ? AND undoes IS NOT NULL)",
            (int(decision_id), int(decision_id)),
        )
        return [r[0] for r in rows]

    @staticmethod
    def _open_where(kinds: Sequence[str] | None, identity: str | None) -> tuple[str, list]:
        sql, params = "status='open'", []
        if kinds is not None and set(kinds) != set(FLAG_KINDS):
            kinds = [check_kind(k) for k in kinds]
            sql += f" AND kind IN ({_marks(kinds)})"
            params += kinds
        if identity is not None:
            sql += " AND identity=?"
            params.append(identity)
        return sql, params

    # ---- decisions ----------------------------------------------------------------------------------------------
    def decide(
        self,
        action: str,
        *,
        reviewer: str,
        image_ids: Sequence[int] = (),
        identity: str | None = None,
        target_identity: str | None = None,
        flag_ids: Sequence[int] | None = None,
        note: str = "",
        strict: bool = False,
    ) -> int:
        """Record one decision and apply it to the current labels, atomically; returns its id.

        action: remove | restore | mark_fake | mark_real | move (needs target_identity) on `image_ids`;
        merge (identity -> target_identity, every photo currently labelled `identity`); keep (closes `flag_ids`).
        flag_ids: the flags this decision answers; by default the open flags on the photos it touches
        (for merge: the open merge proposals between the two identities).
        strict: refuse (StoreError) a decision that answers a flag already answered or changes none of its photos:
        what a second reviewer's, or a double-clicked, copy of a decision made meanwhile looks like. The check runs
        inside the write transaction, so of two such copies exactly one is recorded.
        """
        request = DecisionRequest(action, tuple(image_ids), identity, target_identity,
                                  None if flag_ids is None else tuple(flag_ids), note)
        reviewer = _reviewer(reviewer)
        with self.transaction() as db:
            return self._decide(db, request, reviewer, strict)

    def decide_many(self, requests: Sequence[DecisionRequest], *, reviewer: str, strict: bool = False) -> list[int]:
        """Record several decisions as one batch, all or none (one transaction); returns their ids in order.

        Each is an ordinary decision (undone on its own with `undo`); they share `Decision.batch`, so a history shows
        them together and `undo_many` reverses the lot. A refusal of any one (see `decide`) records none of them.
        Example: `store.decide_many([DecisionRequest("remove", (7,)), DecisionRequest("keep", (9,))], reviewer="ana")`.
        """
        reviewer = _reviewer(reviewer)
        if not requests:
            raise StoreError("nothing to decide")
        with self.transaction() as db:
            ids = _batch(db, [self._decide(db, r, reviewer, strict) for r in requests])
        return ids

    def _decide(self, db: sqlite3.Connection, r: DecisionRequest, reviewer: str, strict: bool) -> int:
        action, identity, target_identity = check_action(r.action), r.identity, r.target_identity
        if action == "undo":
            raise StoreError("use undo(decision_id) to reverse a decision")
        if action in ("move", "merge"):
            target_identity = check_identity_name(target_identity or "")
        image_ids = r.image_ids
        if action == "merge":
            identity = check_identity_name(identity or "")
            if identity == target_identity:
                raise StoreError(f"cannot merge {identity} into itself")
            image_ids = [row[0] for row in db.execute("SELECT id FROM images WHERE identity=?", (identity,))]
            if not image_ids:
                raise StoreError(f"identity {identity!r} has no photos to merge")
        image_ids = sorted({int(i) for i in image_ids})
        if action not in ("merge", "keep") and not image_ids:
            raise StoreError(f"{action} needs at least one photo")
        rows = self._current(db, image_ids)
        if action == "keep" and not (r.flag_ids or image_ids):
            raise StoreError("keep needs the flag(s) it rejects")
        flag_ids = r.flag_ids
        if flag_ids is None:
            flag_ids = self._default_flags(db, action, image_ids, identity, target_identity)
        flag_ids = sorted({int(f) for f in flag_ids})
        if strict:
            self._check_fresh(db, action, rows, flag_ids, target_identity)
        cur = db.execute(
            "INSERT INTO decisions(ts, reviewer, action, identity, target_identity, note) VALUES(?,?,?,?,?,?)",
            (_now(), reviewer, action, identity, target_identity, r.note),
        )
        did = cur.lastrowid
        for image_id, before in rows.items():
            self._record_image(db, did, image_id, before, _apply(action, before, target_identity))
        self._answer_flags(db, did, flag_ids)
        return did

    def undo(self, decision_id: int, *, reviewer: str, note: str = "") -> int:
        """Reverse one decision with a new one.

        Refuses (UndoConflict, naming it) when a later live decision (one that is neither an undo nor undone) touched
        any of the same photos, whatever the photos' labels are now: undoing would silently override that decision.
        Undo the later one first."""
        reviewer = _reviewer(reviewer)
        with self.transaction() as db:
            return self._undo(db, int(decision_id), reviewer, note)

    def undo_many(self, decision_ids: Sequence[int], *, reviewer: str, note: str = "") -> list[int]:
        """Undo several decisions (e.g. a batch) newest first, all or none; the undos form a batch of their own.

        A later decision inside the set does not block an earlier one (it is undone first); one outside does."""
        reviewer = _reviewer(reviewer)
        ids = sorted({int(d) for d in decision_ids}, reverse=True)
        if not ids:
            raise StoreError("nothing to undo")
        with self.transaction() as db:
            return _batch(db, [self._undo(db, d, reviewer, note) for d in ids])

    def batch(self, batch_id: int) -> list[int]:
        """The ids of the decisions of one batch, oldest first ([] when there is no such batch)."""
        rows = self._db.execute("SELECT decision_id FROM decision_batches WHERE batch=? ORDER BY decision_id",
                                (int(batch_id),))
        return [r[0] for r in rows]

    def _undo(self, db: sqlite3.Connection, decision_id: int, reviewer: str, note: str) -> int:
        target = db.execute("SELECT action, undoes FROM decisions WHERE id=?", (decision_id,)).fetchone()
        if target is None:
            raise StoreError(f"there is no decision #{decision_id}")
        if target["action"] == "undo":
            raise StoreError(f"#{decision_id} is itself an undo; make the decision again instead")
        done = db.execute("SELECT id FROM decisions WHERE undoes=?", (decision_id,)).fetchone()
        if done:
            raise StoreError(f"decision #{decision_id} was already undone by #{done[0]}")
        later = db.execute(
            "SELECT d.id, d.reviewer, d.action, di1.image_id, (di2.before_identity<>di2.after_identity OR"
            " di2.before_fake<>di2.after_fake OR di2.before_removed<>di2.after_removed) AS changed"
            f" {_LATER_LIVE} AND di1.decision_id=? ORDER BY d.id DESC LIMIT 1",
            (decision_id,),
        ).fetchone()
        if later is not None:
            how = "changed again" if later["changed"] else "decided on again"
            path = db.execute("SELECT path FROM images WHERE id=?", (later["image_id"],)).fetchone()[0]
            raise UndoConflict(
                f"{path} was {how} by decision #{later['id']} ({later['reviewer']}, "
                f"{later['action'].replace('_', ' ')}); undo that one first"
            )
        changes = db.execute(
            "SELECT image_id, before_identity, before_fake, before_removed, after_identity, after_fake,"
            " after_removed FROM decision_images WHERE decision_id=?",
            (decision_id,),
        ).fetchall()
        cur = db.execute(
            "INSERT INTO decisions(ts, reviewer, action, undoes, note) VALUES(?,?,?,?,?)",
            (_now(), reviewer, "undo", decision_id, note),
        )
        did = cur.lastrowid
        for c in changes:
            self._record_image(db, did, c[0], (c[4], c[5], c[6]), (c[1], c[2], c[3]))
        reopened = [r[0] for r in db.execute("SELECT flag_id FROM decision_flags WHERE decision_id=?", (decision_id,))]
        for flag_id in reopened:
            still = db.execute(
                f"SELECT 1 FROM decision_flags df JOIN decisions d ON d.id=df.decision_id"
                f" WHERE df.flag_id=? AND d.id<>? AND {_LIVE_DECISION}",
                (flag_id, decision_id),
            ).fetchone()
            if not still:
                db.execute("UPDATE flags SET status='open' WHERE id=?", (flag_id,))
        return did

    def history(self, *, limit: int = 50, identity: str | None = None, image_id: int | None = None) -> list[Decision]:
        """Most recent decisions first; `identity` matches decisions on that identity's photos or naming it."""
        where, params = [], []
        if image_id is not None:
            where.append("h.id IN (SELECT decision_id FROM decision_images WHERE image_id=?)")
            params.append(image_id)
        if identity is not None:
            where.append(
                "(h.identity=? OR h.target_identity=? OR h.id IN (SELECT decision_id FROM decision_images"
                " WHERE before_identity=? OR after_identity=?))"
            )
            params.extend([identity] * 4)
        return self._decisions(" AND ".join(where) or "1", params, limit)

    def decision(self, decision_id: int) -> Decision:
        """One entry of the log, as `history` gives it; StoreError when there is none with that id."""
        found = self._decisions("h.id=?", [int(decision_id)], 1)
        if not found:
            raise StoreError(f"there is no decision #{decision_id}")
        return found[0]

    def _decisions(self, where: str, params: list, limit: int) -> list[Decision]:
        sql = (
            "SELECT h.*, (SELECT u.id FROM decisions u WHERE u.undoes=h.id) AS undone_by,"
            f" (SELECT MAX(d.id) {_LATER_LIVE} AND di1.decision_id=h.id) AS blocked_by,"
            " (SELECT b.batch FROM decision_batches b WHERE b.decision_id=h.id) AS batch"
            f" FROM decisions h WHERE {where} ORDER BY h.id DESC LIMIT {int(limit)}"
        )
        out = []
        for r in self._db.execute(sql, params).fetchall():
            imgs = tuple(x[0] for x in self._db.execute("SELECT image_id FROM decision_images WHERE decision_id=?", (r["id"],)))
            flg = tuple(x[0] for x in self._db.execute("SELECT flag_id FROM decision_flags WHERE decision_id=?", (r["id"],)))
            out.append(
                Decision(
                    r["id"], r["ts"], r["reviewer"], r["action"], r["identity"], r["target_identity"], r["undoes"],
                    r["note"], imgs, flg, r["undone_by"], r["blocked_by"], r["batch"],
                )
            )
        return out

    def decisions_by_image(self) -> dict[int, tuple[int, ...]]:
        """image id -> the live decisions (not undone, not undos) that changed its label, oldest first.

        What export's manifest cites as "which decisions did it"; images no live decision changed are absent.
        """
        rows = self._db.execute(
            "SELECT di.image_id, di.decision_id FROM decision_images di JOIN decisions d ON d.id=di.decision_id"
            f" WHERE d.action<>'undo' AND {_LIVE_DECISION} AND (di.before_identity<>di.after_identity"
            " OR di.before_fake<>di.after_fake OR di.before_removed<>di.after_removed)"
            " ORDER BY di.image_id, di.decision_id"
        ).fetchall()
        out: dict[int, tuple[int, ...]] = {}
        for image_id, decision_id in rows:
            out[image_id] = (*out.get(image_id, ()), decision_id)
        return out

    def rebuild(self) -> None:
        """Re-derive current labels and flag status from the found labels and the decision log (one transaction)."""
        with self.transaction() as db:
            db.execute("UPDATE images SET identity=identity_found, is_fake=fake_found, removed=0")
            db.execute(
                "UPDATE images SET (identity, is_fake, removed) = (SELECT after_identity, after_fake, after_removed"
                " FROM decision_images di WHERE di.image_id=images.id ORDER BY di.decision_id DESC LIMIT 1)"
                " WHERE id IN (SELECT image_id FROM decision_images)"
            )
            db.execute("UPDATE flags SET status='open'")
            db.execute(
                "UPDATE flags SET status='resolved' WHERE id IN (SELECT df.flag_id FROM decision_flags df"
                f" JOIN decisions d ON d.id=df.decision_id WHERE {_LIVE_DECISION})"
            )

    # ---- internals ----------------------------------------------------------------------------------------------
    @staticmethod
    def _current(db: sqlite3.Connection, image_ids: Sequence[int]) -> dict[int, tuple[str, int, int]]:
        out = {}
        for i in image_ids:
            row = db.execute("SELECT identity, is_fake, removed FROM images WHERE id=?", (i,)).fetchone()
            if row is None:
                raise StoreError(f"there is no image #{i}")
            out[i] = (row[0], row[1], row[2])
        return out

    @staticmethod
    def _check_fresh(db, action, rows, flag_ids, target_identity) -> None:
        for flag_id in flag_ids:
            answered = db.execute(
                f"SELECT d.id, d.reviewer FROM decision_flags df JOIN decisions d ON d.id=df.decision_id"
                f" WHERE df.flag_id=? AND {_LIVE_DECISION} ORDER BY d.id DESC LIMIT 1",
                (flag_id,),
            ).fetchone()
            if answered:
                raise StoreError(f"flag #{flag_id} was already answered by decision #{answered[0]} ({answered[1]})")
        if action == "keep" and not flag_ids:
            raise StoreError("nothing to keep: no open flag on the photo(s)")
        if action != "keep" and rows and all(_apply(action, b, target_identity) == b for b in rows.values()):
            raise StoreError(f"nothing to change: the photo(s) are already as '{action.replace('_', ' ')}' would leave them")

    @staticmethod
    def _default_flags(db, action, image_ids, identity, target_identity) -> list[int]:
        if action == "merge":
            return [
                r[0]
                for r in db.execute(
                    "SELECT id FROM flags WHERE status='open' AND kind='merge' AND"
                    " ((identity=? AND suggested_identity=?) OR (identity=? AND suggested_identity=?))",
                    (identity, target_identity, target_identity, identity),
                )
            ]
        ids = list(image_ids)
        if not ids:
            return []
        return [
            r[0]
            for r in db.execute(
                f"SELECT id FROM flags WHERE status='open' AND image_id IN ({','.join('?' * len(ids))})", ids
            )
        ]

    @staticmethod
    def _record_image(db, decision_id, image_id, before, after) -> None:
        db.execute("INSERT INTO decision_images VALUES(?,?,?,?,?,?,?,?)", (decision_id, image_id, *before, *after))
        db.execute("UPDATE images SET identity=?, is_fake=?, removed=? WHERE id=?", (*after, image_id))

    @staticmethod
    def _answer_flags(db, decision_id, flag_ids) -> None:
        for flag_id in flag_ids:
            if db.execute("SELECT 1 FROM flags WHERE id=?", (flag_id,)).fetchone() is None:
                raise StoreError(f"there is no flag #{flag_id}")
            db.execute("INSERT INTO decision_flags VALUES(?, ?)", (decision_id, flag_id))
            db.execute("UPDATE flags SET status='resolved' WHERE id=?", (flag_id,))


def _apply(action: str, before: tuple[str, int, int], target_identity: str | None) -> tuple[str, int, int]:
    identity, is_fake, removed = before
    if action == "remove":
        return identity, is_fake, 1
    if action == "restore":
        return identity, is_fake, 0
    if action == "mark_fake":
        return identity, 1, removed
    if action == "mark_real":
        return identity, 0, removed
    if action in ("move", "merge"):
        return target_identity, is_fake, removed
    return before  # keep


_CHUNK = 900  # SQLite caps the number of bound parameters of one statement


def _insert_flags(db: sqlite3.Connection, rows: Iterable[tuple]) -> int:
    """INSERT flag rows (consumed as they come) with one prepared statement, not one execute per flag (the 10M-photo
    clean spent minutes there); returns how many. Runs inside the caller's transaction."""
    return db.executemany(
        "INSERT INTO flags(source, kind, image_id, identity, suggested_identity, component, score, details, created)"
        " VALUES(?,?,?,?,?,?,?,?,?)",
        rows,
    ).rowcount


def _chunks(items: Sequence) -> list[list]:
    return [list(items[k : k + _CHUNK]) for k in range(0, len(items), _CHUNK)]


def _nullable(values: Sequence) -> list:
    """The values as a list, None where one is missing (None, NaN, pd.NA): what SQLite binds as NULL."""
    out = np.asarray(values, dtype=object).copy() if len(values) else np.empty(0, object)
    out[pd.isna(out)] = None
    return out.tolist()


def _marks(items: Sequence) -> str:
    return ",".join("?" * len(items))


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with LIKE's own wildcards in it taken literally (ESCAPE '\\')."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
