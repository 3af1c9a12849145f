"""Ingest: record every photo of a dataset in the label store, checked, hashed and labelled as found.

Why it works this way:
- every file is fully decoded with `labels.imagefile.check_image`, the same reader the embedding pass and the app use,
  so a file ingest calls readable is readable everywhere; one bad file is recorded with its reason, never a crash;
- sha256 hashing and decoding run in a thread pool (hashlib and Pillow release the GIL), and results are written in
  chunks, so a run killed half-way resumes without redoing finished files;
- a re-ingest re-reads only files whose size or mtime changed (plus files that were unreadable, since a permission fix
  does not touch mtime), marks vanished files missing and never touches a reviewer's decisions;
- exact duplicates (same sha256) and unreadable files become flags of source 'ingest', replaced as a set on every run,
  so answered flags keep their history and open ones reflect the dataset as it is now;
- nothing is left out quietly: files in formats it cannot read (.heic ...), files that are not photos, empty identity
  folders, identities without a single usable photo, unreadable and refused files are named in the summary (the first
  few of each kind and a count) and all listed in WORK/ingest_problems.csv (rewritten on every run).

Example:
    >>> summary = ingest("photos", "work")          # photos/<identity>/<photo>.jpg [+ photos/meta.json]
    >>> print(summary.report())
    >>> ingest(None, "work2", csv="labels.csv", root="photos")
"""
from __future__ import annotations

import csv as csvlib
import io
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from tqdm import tqdm

from labels.cli import UserError, command_parser, run_cli
from labels.files import atomic_write, file_sha256
from labels.imagefile import ImageError, check_image
from labels.layouts import SKIP_KINDS, Entry, Layout, Refused, Skipped, read_layout
from labels.store import FoundImage, KnownFile, LabelStore, NewFlag

SOURCE = "ingest"  # the flag source this stage owns
DEFAULT_WORKERS = min(16, 2 * (os.cpu_count() or 2))
_BATCH = 256  # files handed to the pool at a time
_WRITE_EVERY = 2000  # files per store transaction: what a killed run can lose
_SIZE_BUCKETS = ((1, 1), (2, 4), (5, 9), (10, 19), (20, 49), (50, 99), (100, None))
_SHOW = 10  # refused entries listed in the summary before "... and N more"
_SHOW_SKIPPED = 3  # entries of each kind of problem named in the summary
PROBLEMS_NAME = "ingest_problems.csv"  # WORK/ingest_problems.csv: every file or folder ingest did not use, and why
PROBLEM_COLUMNS = ("entry", "kind", "reason")
# The kinds of ingest_problems.csv rows: SKIP_KINDS (what the layout left out), then what ingest found.
PROBLEM_KINDS = {
    **SKIP_KINDS,
    "no_usable_photo": "identity(ies) without a single usable photo",
    "unreadable": "unreadable photo(s) (flagged 'unreadable')",
    "refused": "refused entries",
}


class IngestError(UserError):
    """The work folder cannot take this dataset; the message says what to do instead."""


@dataclass
class IngestSummary:
    """What one ingest run found and did; `report()` is the text the CLI prints."""

    workdir: Path
    dataset_root: Path
    layout: str
    labels_file: Path | None
    n_files: int  # photos in the dataset now (refused entries excluded)
    n_new: int
    n_reread: int  # known files read again: size or mtime changed, or unreadable last time
    n_unchanged: int  # known files skipped: same size and mtime as recorded
    n_missing: int  # files the store knew that are gone now (marked missing by this run)
    identity_sizes: dict[str, int]  # identity -> photos as found
    n_fake: int
    unreadable: dict[str, list[str]]  # reason -> paths, over the whole dataset (not only this run's files)
    n_duplicates: int  # copies flagged: every copy of a photo but the first by path
    refused: list[Refused] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # everything in the dataset folder left out, by name
    hidden: int = 0  # hidden files and folders passed over
    no_usable: dict[str, int] = field(default_factory=dict)  # identity -> its photos, none of them readable
    unlisted: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[Skipped]:
        """Every file or folder not used and why, as WORK/ingest_problems.csv lists them (by kind, then entry)."""
        rows = [*self.skipped]
        rows += [Skipped(f"{i}/", "no_usable_photo", f"none of its {n} photo(s) is readable (see 'unreadable')")
                 for i, n in sorted(self.no_usable.items())]
        rows += [Skipped(p, "unreadable", why) for why, paths in self.unreadable.items() for p in paths]
        rows += [Skipped(r.entry, "refused", r.reason) for r in self.refused]
        order = list(PROBLEM_KINDS)
        return sorted(rows, key=lambda r: (order.index(r.kind), r.entry))

    def report(self) -> str:
        """A summary a person reads: counts, one line per reason a file is unusable, refused entries by name."""
        n_read = self.n_new + self.n_reread
        labels = f", labels from {self.labels_file}" if self.labels_file else ""
        lines = [
            f"ingested {self.dataset_root} ({self.layout} layout{labels}) into {self.workdir / 'labels.sqlite'}",
            f"  {self.n_files:,} photos: {self.n_new:,} new, {self.n_reread:,} read again, "
            f"{self.n_unchanged:,} unchanged (not re-read)",
        ]
        if self.n_missing:
            lines.append(f"  {self.n_missing:,} files known from an earlier ingest are gone: marked missing")
        sizes = sorted(self.identity_sizes.values())
        if sizes:
            lines.append(
                f"  {len(sizes):,} identities, photos per identity: min {sizes[0]},"
                f" median {statistics.median(sizes):g}, max {sizes[-1]}"
                f" ({', '.join(f'{v:,} with {k}' for k, v in _bucket(sizes).items())})"
            )
        if self.no_usable:
            names = sorted(self.no_usable)
            more = f" and {len(names) - _SHOW_SKIPPED:,} more" if len(names) > _SHOW_SKIPPED else ""
            lines.append(
                f"  warning: {len(names):,} {'identity has' if len(names) == 1 else 'identities have'} no usable photo"
                f" (every photo unreadable): {', '.join(names[:_SHOW_SKIPPED])}{more}"
            )
        lines.append(f"  deepfakes (as found): {self.n_fake:,}")
        n_bad = sum(len(v) for v in self.unreadable.values())
        lines.append(f"  unreadable: {n_bad:,}" + (" (flagged 'unreadable')" if n_bad else ""))
        for reason, paths in sorted(self.unreadable.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"    {len(paths):,} x {reason} (e.g. {', '.join(paths[:3])})")
        lines.append(f"  exact duplicates: {self.n_duplicates:,} extra copies flagged 'duplicate'")
        if self.unlisted and self.labels_file:
            lines.append(
                f"  {len(self.unlisted):,} photos are not in {self.labels_file.name}: counted as real"
                f" (e.g. {', '.join(self.unlisted[:3])})"
            )
        for kind, what in SKIP_KINDS.items():
            rows = [s for s in self.skipped if s.kind == kind]
            if rows:
                shown = "; ".join(f"{s.entry} ({s.reason})" if k == 0 or s.reason != rows[0].reason else s.entry
                                  for k, s in enumerate(rows[:_SHOW_SKIPPED]))
                more = f"; ... and {len(rows) - _SHOW_SKIPPED:,} more" if len(rows) > _SHOW_SKIPPED else ""
                lines.append(f"  not used: {len(rows):,} {what}: {shown}{more}")
        if self.hidden:
            lines.append(f"  skipped {self.hidden:,} hidden file(s) or folder(s) (names starting with '.')")
        if self.refused:
            lines.append(f"  refused {len(self.refused):,} {'entry' if len(self.refused) == 1 else 'entries'}:")
            lines.extend(f"    {r}" for r in self.refused[:_SHOW])
            if len(self.refused) > _SHOW:
                lines.append(f"    ... and {len(self.refused) - _SHOW:,} more")
        if self.problems:
            lines.append(f"  every file or folder not used, and why: {self.workdir / PROBLEMS_NAME}")
        rate = n_read / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"  done in {self.seconds:.1f} s ({n_read:,} files read, {rate:,.0f} files/s)")
        return "\n".join(lines)


def _bucket(sizes: Sequence[int]) -> dict[str, int]:
    out = {}
    for lo, hi in _SIZE_BUCKETS:
        n = sum(1 for s in sizes if s >= lo and (hi is None or s <= hi))
        if n:
            out[str(lo) if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"] = n
    return out


def ingest(
    data: str | Path | None,
    workdir: str | Path,
    *,
    csv: str | Path | None = None,
    root: str | Path | None = None,
    workers: int = DEFAULT_WORKERS,
    force_root: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Ingest (or re-ingest) a dataset into WORK/labels.sqlite and return what was found.

    data: the dataset folder (identity folders, or the challenge layout `images/` + `meta.json`); None with `csv`.
    csv, root: a `path,identity[,is_fake]` list instead, its paths relative to `root` (default: the CSV's folder).
    force_root: accept a work folder that recorded another dataset root (the dataset moved; paths stay relative).
    Raises LayoutError (malformed labels file, no photos: nothing written) or IngestError (wrong work folder).

    Example:
        >>> s = ingest("photos", "work", progress=False)
        >>> s.n_files, s.n_duplicates, sorted(s.unreadable)
        (412, 3, ['truncated or corrupt image data'])
    """
    started = time.perf_counter()
    workdir = Path(workdir).expanduser().resolve()
    layout = read_layout(data, csv=csv, root=root, exclude=[workdir])
    with LabelStore.open(workdir) as store:
        _claim(store, workdir, layout, force_root)
        known = store.known_files()
        counts = _read_files(store, layout, known, workers, progress)
        seen = {e.path for e in layout.entries}
        n_missing = store.mark_missing(p for p, k in known.items() if k.present and p not in seen)
        flags, unreadable, no_usable = _ingest_flags(store)
        store.replace_flags(SOURCE, flags)
        store.set_meta(last_ingest=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    summary = IngestSummary(
        workdir=workdir,
        dataset_root=layout.root,
        layout=layout.kind,
        labels_file=layout.labels_file,
        n_files=len(layout.entries),
        n_new=counts["new"],
        n_reread=counts["reread"],
        n_unchanged=counts["unchanged"],
        n_missing=n_missing,
        identity_sizes=dict(Counter(e.identity for e in layout.entries)),
        n_fake=sum(e.is_fake for e in layout.entries),
        unreadable=unreadable,
        n_duplicates=sum(f.kind == "duplicate" for f in flags),
        refused=layout.refused,
        skipped=layout.skipped,
        hidden=layout.hidden,
        no_usable=no_usable,
        unlisted=layout.unlisted,
    )
    write_problems(workdir / PROBLEMS_NAME, summary.problems)
    summary.seconds = time.perf_counter() - started
    return summary


def write_problems(path: Path, problems: Sequence[Skipped]) -> None:
    """WORK/ingest_problems.csv: entry,kind,reason, one row per file or folder not used (a header when none)."""
    text = io.StringIO(newline="")
    writer = csvlib.writer(text)
    writer.writerow(PROBLEM_COLUMNS)
    writer.writerows((p.entry, p.kind, p.reason) for p in problems)
    atomic_write(path, text.getvalue())


def _claim(store: LabelStore, workdir: Path, layout: Layout, force_root: bool) -> None:
    """Record the dataset root, refusing a work folder that belongs to another dataset."""
    old = store.get_meta("dataset_root")
    if old is not None and Path(old) != layout.root and not force_root:
        raise IngestError(
            f"{workdir} already holds the labels of {old}, not {layout.root}: use another --workdir, "
            "or --force-root if the dataset moved there (photos are matched by their path inside the dataset)"
        )
    store.set_meta(dataset_root=str(layout.root), layout=layout.kind, labels_file=str(layout.labels_file or ""))


def _read_files(
    store: LabelStore, layout: Layout, known: dict[str, KnownFile], workers: int, progress: bool
) -> Counter:
    """Examine every entry in a thread pool and write what changed in chunks; returns new/reread/unchanged counts."""
    counts: Counter = Counter()
    pending: list[FoundImage] = []
    examine = partial(_examine, layout.root, known)
    entries = layout.entries
    with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(
        total=len(entries), unit="file", desc="ingest", disable=not progress, dynamic_ncols=True
    ) as bar:
        for start in range(0, len(entries), _BATCH):
            batch = entries[start : start + _BATCH]
            for entry, found in zip(batch, pool.map(examine, batch)):
                before = known.get(entry.path)
                if found is not None:
                    counts["reread" if before else "new"] += 1
                    pending.append(found)
                    continue
                counts["unchanged"] += 1
                if (before.identity_found, before.fake_found, before.present) != (entry.identity, entry.is_fake, True):
                    pending.append(  # relabelled in meta.json or CSV, or back after being missing: no need to re-read
                        FoundImage(
                            entry.path, before.size, before.mtime_ns, entry.identity, entry.is_fake, before.sha256,
                            before.width, before.height, before.problem,
                        )
                    )
            bar.update(len(batch))
            if len(pending) >= _WRITE_EVERY:
                store.add_images(pending)
                pending = []
        store.add_images(pending)
    return counts


def _examine(root: Path, known: dict[str, KnownFile], entry: Entry) -> FoundImage | None:
    """The file as found now, or None when it is known, was readable and has the same size and mtime."""
    path = root / entry.path
    try:
        st = path.stat()
    except OSError as exc:
        return FoundImage(entry.path, 0, 0, entry.identity, entry.is_fake, problem=_os_reason(exc))
    before = known.get(entry.path)
    if before and before.problem is None and (before.size, before.mtime_ns) == (st.st_size, st.st_mtime_ns):
        return None
    sha = problem = width = height = None
    try:
        sha = file_sha256(path)
        width, height = check_image(path)
    except ImageError as exc:
        problem = exc.reason
    except OSError as exc:
        problem = _os_reason(exc)
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not stop 100k others
        problem = f"corrupt image ({type(exc).__name__})"
    return FoundImage(
        entry.path, st.st_size, st.st_mtime_ns, entry.identity, entry.is_fake, sha, width, height, problem
    )


def _os_reason(exc: OSError) -> str:
    return f"cannot read file ({exc.strerror or exc})"


def _ingest_flags(store: LabelStore) -> tuple[list[NewFlag], dict[str, list[str]], dict[str, int]]:
    """'unreadable' flags for present files with a problem, 'duplicate' flags on every copy but the first by path;
    also the unreadable paths by reason and the identities (as found) none of whose photos is readable."""
    images = store.images(present_only=True)
    usable = images.groupby("identity_found").problem.apply(lambda p: int(p.isna().sum()))
    sizes = images.groupby("identity_found").size()
    no_usable = {str(i): int(sizes[i]) for i in usable.index[usable == 0]}
    bad = images[images.problem.notna()].sort_values("path")
    flags = [NewFlag("unreadable", r.identity, r.path, details={"reason": r.problem}) for r in bad.itertuples()]
    unreadable: dict[str, list[str]] = {}
    for r in bad.itertuples():
        unreadable.setdefault(r.problem, []).append(r.path)
    ok = images[images.problem.isna() & images.sha256.notna()]
    dup = ok[ok.sha256.duplicated(keep=False)].sort_values(["sha256", "path"])
    first = dup.groupby("sha256").path.transform("first")
    copies = dup[dup.path != first]
    flags += [
        NewFlag("duplicate", r.identity, r.path, details={"duplicate_of": original})
        for r, original in zip(copies.itertuples(), first[copies.index])
    ]
    return flags, unreadable, no_usable


_EPILOG = """\
examples:
  # one folder per identity (optionally with DATA/meta.json marking deepfakes: {"Ana/3.jpg": 1, ...})
  python -m labels.ingest photos --workdir work

  # the challenge layout: train/images/000000/0.jpg ... and train/meta.json {"000000/0.jpg": 0, ...}
  python -m labels.ingest train --workdir work

  # an explicit list: a CSV with the header path,identity[,is_fake]; paths relative to --root
  python -m labels.ingest --csv labels.csv --root photos --workdir work

Run it again after the dataset changed: only new or modified files are read, vanished ones are marked missing, and
decisions already made are kept. Nothing in DATA is ever modified.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(
        "python -m labels.ingest",
        "Record every photo of a dataset (checked, hashed, labelled as found) in WORK/labels.sqlite.",
        _EPILOG,
    )
    parser.add_argument("data", nargs="?", help="the dataset folder (identity folders, or images/ + meta.json)")
    parser.add_argument("--workdir", required=True, help="the work folder (created if needed) holding labels.sqlite")
    parser.add_argument("--csv", help="read photos and labels from this CSV (path,identity[,is_fake]) instead of DATA")
    parser.add_argument("--root", help="folder the CSV's paths are relative to (default: the CSV's folder)")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="threads hashing and decoding (default: %(default)s)"
    )
    parser.add_argument(
        "--force-root", action="store_true", help="the dataset moved: re-point a work folder that recorded another root"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.data is None and args.csv is None:
        parser.error("give the dataset folder DATA, or --csv FILE")

    def run() -> None:
        summary = ingest(
            args.data, args.workdir, csv=args.csv, root=args.root, workers=args.workers,
            force_root=args.force_root, progress=not args.quiet,
        )
        print(summary.report())

    return run_cli(run, interrupted="run the same command again: photos already recorded are not read again")


if __name__ == "__main__":
    sys.exit(main())
