"""Export: the cleaned dataset the decision log describes, as identity folders, the challenge layout or a CSV.

Why it works this way:
- `effective_labels` is the single definition of "the cleaned labels": export writes exactly its rows, and training
  calls it too, so a model is never trained on labels an export would not produce;
- flags nobody reviewed are either left alone (`keep`) or acted on per `labels.vocab.AUTO_ACTIONS` (`apply`), in memory
  only: an unattended pipeline gets a cleaned set without anyone's name on decisions they never made;
- the output is built in a hidden sibling folder and swapped in at the end (`labels.outputs.replacing`), so a failed
  or killed export leaves no half-written dataset; `--overwrite` replaces only an earlier export, deletes exactly the
  files its manifest lists, and refuses a folder holding anything else;
- every destination path is built from checked identity names and file names, so nothing is written outside --out;
- `manifest.json` says what changed relative to the source and which decisions (or auto-applied flags) did it.

Example:
    >>> summary = export("work", "clean", fmt="meta", unreviewed="apply")   # clean/images/<id>/<n>.jpg + meta.json
    >>> print(summary.report())
    >>> labels = effective_labels(LabelStore.open("work"))                  # what training uses
    >>> train = labels[~labels.removed]
"""
from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from labels.cli import UserError, command_parser, run_cli
from labels.estimate import PrecisionEstimate, estimate_precision, with_bands
from labels.layouts import META_NAME, identity_problem
from labels.outputs import MANIFEST, OutputFolderError, check_replaceable, replacing
from labels.store import STORE_NAME, LabelStore
from labels.vocab import AUTO_ACTIONS

FORMATS = ("folders", "meta", "csv")
POLICIES = ("keep", "apply")
COMMAND = "labels.export"
CSV_NAME = "labels.csv"
# Errors after which a hard link cannot work here (another file system, links not supported): copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


class ExportError(UserError):
    """The export cannot be written as asked; the message names the folder or file and what to do."""


@dataclass
class ExportSummary:
    """What one export wrote; `report()` is the text the CLI prints."""

    out: Path
    fmt: str
    unreviewed: str
    n_images: int
    n_identities: int
    n_fake: int
    n_removed: int  # readable photos left out by a decision or an applied flag
    n_moved: int
    n_marked_fake: int
    n_marked_real: int
    n_auto: int  # open flags acted on (unreviewed='apply')
    n_open_left: int  # open flags nothing was done about
    left_out: dict[str, int] = field(default_factory=dict)  # 'unreadable' / 'missing' -> photos
    files: dict[str, int] = field(default_factory=dict)  # 'hardlink' / 'copy' -> files written
    notes: list[str] = field(default_factory=list)  # what was left beside OUT and why (see labels.outputs)
    seconds: float = 0.0
    applied_estimate: PrecisionEstimate | None = None  # unreviewed='apply': how many of the applied flags are right

    def report(self) -> str:
        how = ", ".join(f"{n:,} {'hard links' if k == 'hardlink' else 'copies'}" for k, n in sorted(self.files.items()))
        lines = [
            f"exported {self.n_images:,} photos of {self.n_identities:,} identities ({self.n_fake:,} deepfakes) to "
            f"{self.out} as {self.fmt}" + (f" ({how})" if how else ""),
            f"  changes from the source: {self.n_removed:,} removed, {self.n_moved:,} moved, "
            f"{self.n_marked_fake:,} marked fake, {self.n_marked_real:,} marked real",
        ]
        if self.unreviewed == "apply":
            lines.append(f"  unreviewed flags: applied {self.n_auto:,}; {self.n_open_left:,} need a person (left open)")
            if self.applied_estimate is not None:
                lines.append(f"  of the {self.n_auto:,} applied: {self.applied_estimate.describe()}")
        else:
            lines.append(f"  unreviewed flags: {self.n_open_left:,} open flags left as they are (--unreviewed keep)")
        if self.left_out:
            lines.append("  also left out: " + ", ".join(f"{n:,} {why}" for why, n in sorted(self.left_out.items())))
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  what changed and why: {self.out / MANIFEST} (done in {self.seconds:.1f} s)")
        return "\n".join(lines)


def effective_labels(store: LabelStore, unreviewed: str = "keep") -> pd.DataFrame:
    """The labels an export writes: one row per present, readable photo, removed ones included (removed=True).

    unreviewed: 'keep' leaves open flags alone; 'apply' acts on them per labels.vocab.AUTO_ACTIONS (remove the photo,
    or merge the identity with fewer photos into the other), in memory only: nothing is written to the store.
    Returns columns image_id, path (relative to the dataset root), identity, is_fake, removed, identity_found,
    fake_found, decisions (ids of the live decisions that changed the photo), auto_flags (ids of the flags applied)
    and set_by (the two as text, '' when the photo is as found).

    Example:
        >>> labels = effective_labels(store, "apply")
        >>> labels.loc[~labels.removed, ["path", "identity", "is_fake"]].head()
    """
    _check_choice(unreviewed, POLICIES, "--unreviewed")
    with store.snapshot():
        images = store.images(present_only=True, readable_only=True)
        trail = store.decisions_by_image()
        flags = store.flags(status="open") if unreviewed == "apply" else None
    labels = pd.DataFrame(
        {
            "image_id": images.id.astype(int),
            "path": images.path,
            "identity": images.identity,
            "is_fake": images.is_fake.astype(bool),
            "removed": images.removed.astype(bool),
            "identity_found": images.identity_found,
            "fake_found": images.fake_found.astype(bool),
            "decisions": [trail.get(i, ()) for i in images.id],
        }
    )
    auto: dict[int, list[int]] = defaultdict(list)  # row -> flags applied
    if flags is not None:
        _apply_open_flags(flags, labels, auto)
    labels["auto_flags"] = [tuple(auto.get(i, ())) for i in range(len(labels))]
    labels["set_by"] = [_set_by(d, a) for d, a in zip(labels.decisions, labels.auto_flags)]
    return labels


def _set_by(decisions: Sequence[int], flags: Sequence[int]) -> str:
    return "; ".join(_by(decisions, flags))


def _by(decisions: Sequence[int], flags: Sequence[int]) -> list[str]:
    return [f"decision #{d}" for d in decisions] + [f"auto: flag #{f}" for f in flags]


def _apply_open_flags(flags: pd.DataFrame, labels: pd.DataFrame, auto: dict[int, list[int]]) -> None:
    """Act on every open flag AUTO_ACTIONS covers, changing `labels` in place and noting the flag per row.

    Order matters and is fixed: removals first; then duplicates, keeping the first surviving copy of each photo (so a
    photo is never lost because its original was removed too); then merges, counting photos after the removals.
    """
    flags = flags[flags.kind.isin(list(AUTO_ACTIONS))]
    row = {int(i): k for k, i in enumerate(labels.image_id)}
    by_path = {p: k for k, p in enumerate(labels.path)}
    removed = labels.removed.to_numpy().copy()
    identity = labels.identity.to_numpy().copy()

    def remove(k: int, flag_id: int) -> None:
        if not removed[k]:
            removed[k] = True
            auto[k].append(int(flag_id))

    removals = flags[(flags.kind.map(AUTO_ACTIONS) == "remove") & (flags.kind != "duplicate")]
    for f in removals.itertuples():
        if pd.notna(f.image_id) and int(f.image_id) in row:
            remove(row[int(f.image_id)], f.id)

    copies: dict[str, list[tuple[str, int, int]]] = defaultdict(list)  # original path -> (path, flag, row)
    for f in flags[flags.kind == "duplicate"].itertuples():
        original = json.loads(f.details).get("duplicate_of")
        if pd.notna(f.image_id) and int(f.image_id) in row and original:
            copies[original].append((f.image, int(f.id), row[int(f.image_id)]))
    for original, flagged in copies.items():
        group = ([(original, None, by_path[original])] if original in by_path else []) + sorted(flagged)
        for _, flag_id, k in [g for g in group if not removed[g[2]]][1:]:
            if flag_id is not None:
                remove(k, flag_id)

    size = Counter(identity[~removed])
    parent: dict[str, str] = {}
    merged_by: dict[str, int] = {}

    def find(name: str) -> str:
        while name in parent:
            name = parent[name]
        return name

    for f in flags[flags.kind == "merge"].sort_values("id").itertuples():
        if not isinstance(f.suggested_identity, str):
            continue
        a, b = find(f.identity), find(f.suggested_identity)
        if a == b or not size[a] or not size[b]:
            continue
        small, big = (b, a) if size[b] < size[a] else (a, b)  # a tie goes the way the flag suggests
        parent[small], merged_by[small] = big, int(f.id)
        size[big] += size.pop(small)
    for k, name in enumerate(identity):
        while name in parent:
            auto[k].append(merged_by[name])
            name = parent[name]
        identity[k] = name
    labels["removed"] = removed
    labels["identity"] = identity


def export(
    workdir: str | Path,
    out: str | Path,
    *,
    fmt: str = "folders",
    unreviewed: str = "keep",
    overwrite: bool = False,
    progress: bool = True,
) -> ExportSummary:
    """Write the cleaned dataset of WORK to OUT and return what was written.

    fmt: 'folders' (OUT/<identity>/<file> hard links + OUT/meta.json), 'meta' (the challenge layout:
    OUT/images/<identity>/<n>.<ext> + OUT/meta.json) or 'csv' (OUT/labels.csv, paths relative to the dataset root).
    Each also writes OUT/manifest.json (the tool's signature, every file written, what changed and why). Both photo
    formats re-ingest as they are (`python -m labels.ingest OUT`).
    overwrite: replace OUT when it holds an earlier export, deleting exactly the files that export listed; a folder
    holding anything else is refused (see labels.outputs).
    Raises ExportError (bad option, unsafe OUT, identity that cannot be a folder, source changed since ingest).

    Example:
        >>> export("work", "clean", fmt="folders", progress=False).n_images
        1203
    """
    started = time.perf_counter()
    _check_choice(fmt, FORMATS, "--format")
    _check_choice(unreviewed, POLICIES, "--unreviewed")
    workdir = Path(workdir).expanduser().resolve()
    if not (workdir / STORE_NAME).is_file():
        raise ExportError(f"{workdir} holds no {STORE_NAME}: run `python -m labels.ingest DATA --workdir {workdir}`")
    out = Path(out).expanduser().resolve()
    with LabelStore.open(workdir) as store, store.snapshot():
        root = store.dataset_root.resolve()
        _check_out(out, root, workdir, overwrite)
        labels = effective_labels(store, unreviewed)
        kept = labels[~labels.removed].copy()
        kept["dest"] = _destinations(kept, fmt)
        everything = store.images(present_only=False)
        known = store.known_files()
        open_flags = store.flags(status="open")
        meta = {
            "dataset_root": str(root),
            "layout": store.get_meta("layout", ""),
            "labels_file": store.get_meta("labels_file", ""),
            "workdir": str(workdir),
        }
        try:
            with replacing(out, COMMAND, overwrite=overwrite) as new:
                new.add(*_listed_files(kept, fmt))
                files = _write_dataset(store, kept, known, new.root, fmt, progress)
                n_left = len(open_flags) - len({f for fl in labels.auto_flags for f in fl})
                manifest = _manifest(meta, fmt, unreviewed, labels, kept, everything, files, n_left)
                estimate = _applied_estimate(store, labels) if unreviewed == "apply" else None
                if estimate is not None:
                    manifest["applied_flags_estimate"] = {**estimate.to_dict(), "summary": estimate.describe()}
                new.save(**manifest)
        except OutputFolderError as exc:
            raise ExportError(str(exc)) from None
    counts = manifest["counts"]
    return ExportSummary(
        out=out,
        fmt=fmt,
        unreviewed=unreviewed,
        n_images=counts["exported"],
        n_identities=counts["identities"],
        n_fake=counts["deepfakes"],
        n_removed=counts["removed"],
        n_moved=counts["moved"],
        n_marked_fake=counts["marked_fake"],
        n_marked_real=counts["marked_real"],
        n_auto=counts["flags_applied"],
        n_open_left=counts["open_flags_left"],
        left_out={k: counts[k] for k in ("unreadable", "missing") if counts[k]},
        files=files,
        notes=new.notes,
        seconds=time.perf_counter() - started,
        applied_estimate=estimate,
    )


def _applied_estimate(store: LabelStore, labels: pd.DataFrame) -> PrecisionEstimate:
    """The estimated precision of the open flags an export applied, from the reviewers' answers (labels.estimate)."""
    flags = with_bands(store.flag_answers())
    return estimate_precision(flags, flags.id.isin({f for fl in labels.auto_flags for f in fl}).to_numpy())


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ExportError(f"{what} must be one of {', '.join(choices)}, not {value!r}")


def _check_out(out: Path, root: Path, workdir: Path, overwrite: bool) -> None:
    """Refuse an OUT that would hold or replace the source or the store, or that is not an export we may replace
    (checked again by `replacing` when the new export is swapped in)."""
    for other, what in ((root, "the source dataset"), (workdir, "the work folder")):
        if other.is_relative_to(out):
            raise ExportError(f"--out {out} would replace {what} {other}; choose another folder")
    if out.is_relative_to(root):
        raise ExportError(
            f"--out {out} is inside the source dataset {root}; export somewhere else (the dataset is never modified)"
        )
    try:
        check_replaceable(out, COMMAND, overwrite)
    except OutputFolderError as exc:
        raise ExportError(str(exc)) from None


def _listed_files(kept: pd.DataFrame, fmt: str) -> list[str]:
    """Every file the export will write, listed in its manifest before the first is written."""
    return [CSV_NAME] if fmt == "csv" else [*kept.dest, META_NAME]


def _destinations(kept: pd.DataFrame, fmt: str) -> list[str]:
    """Where each kept photo goes, relative to OUT ('' for csv), deterministic for the same labels.

    Within an identity, photos that were not moved there come first (by natural path order), so an identity nobody
    touched keeps its file names; colliding names (two '0.jpg' after a merge, 'A.jpg' vs 'a.jpg' on a case-insensitive
    disk) get '~1', '~2', ... before the extension.
    """
    if fmt == "csv":
        return [""] * len(kept)
    bad = {i: p for i in kept.identity.unique() if (p := identity_problem(i))}
    if bad:
        listed = "; ".join(bad.values())
        raise ExportError(f"{len(bad)} identity name(s) cannot be folders: {listed}; move their photos to another")
    identities, found, paths = kept.identity.tolist(), kept.identity_found.tolist(), kept.path.tolist()
    order = sorted(range(len(kept)), key=lambda k: (identities[k], identities[k] != found[k], _natural(paths[k])))
    dest = [""] * len(kept)
    used: set[str] = set()
    number: Counter = Counter()
    for k in order:
        identity, path = identities[k], paths[k]
        name = path.rsplit("/", 1)[-1]
        stem, dot, ext = name.rpartition(".")
        if fmt == "meta":
            dest[k] = f"images/{identity}/{number[identity]}.{ext.lower()}"
            number[identity] += 1
            continue
        candidate, n = name, 0
        while f"{identity}/{candidate}".casefold() in used:
            n += 1
            candidate = f"{stem}~{n}{dot}{ext}"
        used.add(f"{identity}/{candidate}".casefold())
        dest[k] = f"{identity}/{candidate}"
    return dest


def _natural(text: str) -> tuple:
    """'a/9.jpg' before 'a/10.jpg'."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _write_dataset(store, kept: pd.DataFrame, known, tmp: Path, fmt: str, progress: bool) -> dict[str, int]:
    """Place the photos (hard link, else copy) and write meta.json / labels.csv into tmp; returns files per method."""
    if fmt == "csv":
        with open(tmp / CSV_NAME, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "identity", "is_fake"])
            for r in kept.sort_values(["identity", "path"]).itertuples():
                writer.writerow([r.path, r.identity, int(r.is_fake)])
        return {}
    files: Counter = Counter()
    changed: list[str] = []
    made: set[Path] = set()
    for r in tqdm(kept.itertuples(), total=len(kept), unit="file", desc="export", disable=not progress):
        src = store.resolve(r.path)
        try:
            st = src.stat()
        except OSError as exc:
            changed.append(f"{r.path} ({exc.strerror or exc})")
            continue
        if (st.st_size, st.st_mtime_ns) != (known[r.path].size, known[r.path].mtime_ns):
            changed.append(f"{r.path} (modified)")
            continue
        target = tmp / r.dest
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        files[_place(src, target)] += 1
    if changed:
        raise ExportError(
            f"{len(changed)} photo(s) changed or vanished since the last ingest, e.g. {', '.join(changed[:3])}: "
            "run ingest again so the labels describe the files, then export"
        )
    prefix = "images/" if fmt == "meta" else ""
    meta = {r.dest.removeprefix(prefix): int(r.is_fake) for r in kept.sort_values("dest").itertuples()}
    (tmp / META_NAME).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return dict(files)


def _place(src: Path, target: Path) -> str:
    try:
        os.link(src, target)
        return "hardlink"
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
    shutil.copy2(src, target)
    return "copy"


def _manifest(meta, fmt, unreviewed, labels, kept, everything, files, n_open_left) -> dict:
    """What changed relative to the source, per photo, and by which decision or flag."""
    dest = dict(zip(kept.image_id, kept.dest))
    changes = []
    n = Counter()
    for r in labels.sort_values("path").itertuples():
        change: dict = {}
        if r.removed:
            change["removed"] = True
        if r.identity != r.identity_found:
            change["moved"] = {"from": r.identity_found, "to": r.identity}
        if r.is_fake != r.fake_found:
            change["marked"] = "fake" if r.is_fake else "real"
        if not change:
            continue
        if r.removed:
            n["removed"] += 1
        else:  # moves and marks counted among the photos exported; the list below also has those of removed photos
            n.update(k if k != "marked" else f"marked_{change['marked']}" for k in change)
            if fmt != "csv":
                change["exported_as"] = dest[r.image_id]
        changes.append({"image_id": int(r.image_id), "path": r.path, **change, "by": _by(r.decisions, r.auto_flags)})
    missing = everything[everything.present == 0]
    unreadable = everything[(everything.present == 1) & everything.problem.notna()]
    left_out = [{"path": p, "reason": f"unreadable: {why}"} for p, why in zip(unreadable.path, unreadable.problem)]
    left_out += [{"path": p, "reason": "missing: gone from the dataset at the last ingest"} for p in missing.path]
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": meta,
        "options": {"format": fmt, "unreviewed": unreviewed},
        "placed": files,
        "counts": {
            "source_photos": int((everything.present == 1).sum()),
            "exported": len(kept),
            "identities": int(kept.identity.nunique()),
            "deepfakes": int(kept.is_fake.sum()),
            "removed": n["removed"],
            "moved": n["moved"],
            "marked_fake": n["marked_fake"],
            "marked_real": n["marked_real"],
            "unreadable": len(unreadable),
            "missing": len(missing),
            "flags_applied": len({f for fl in labels.auto_flags for f in fl}),
            "open_flags_left": n_open_left,
        },
        "changes": changes,
        "left_out": sorted(left_out, key=lambda x: x["path"]),
    }


_EPILOG = """\
examples:
  # identity folders of hard links (copies across file systems) + meta.json marking deepfakes
  python -m labels.export work --out clean

  # the challenge layout: clean/images/<identity>/<n>.jpg + clean/meta.json
  python -m labels.export work --out clean --format meta

  # a CSV path,identity,is_fake (paths relative to the original dataset); act on flags nobody reviewed
  python -m labels.export work --out clean --format csv --unreviewed apply --overwrite

Removed photos are left out, moved ones appear under their new identity, unreadable and missing files are left out.
OUT/manifest.json lists every change relative to the source and the decision (or, with --unreviewed apply, the flag)
behind it. Re-ingest an export with `python -m labels.ingest clean --workdir work2`.
Hard links share their bytes with the source photos: edit a copy, never an exported file in place.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(
        "python -m labels.export",
        "Write the cleaned dataset (the decision log applied to the ingested photos) to a new folder.",
        _EPILOG,
    )
    parser.add_argument("workdir", metavar="WORK", help="the work folder holding labels.sqlite")
    parser.add_argument("--out", required=True, help="the folder to write (must be empty or absent, see --overwrite)")
    parser.add_argument("--format", choices=FORMATS, default="folders", help="output layout (default: %(default)s)")
    parser.add_argument(
        "--unreviewed", choices=POLICIES, default="keep",
        help="open flags: keep = leave the photos as they are (default); apply = act on them (remove, merge)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier export")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def run() -> None:
        summary = export(
            args.workdir, args.out, fmt=args.format, unreviewed=args.unreviewed, overwrite=args.overwrite,
            progress=not args.quiet,
        )
        print(summary.report())

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
