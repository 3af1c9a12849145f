"""Reading a dataset folder: which files are photos, whose, and which are deepfakes.

Three layouts, because that is how face-verification sets arrive:
- `folders`: DATA/<identity>/<photo> (deeper sub-folders count for their top folder, like torchvision's ImageFolder),
  optionally DATA/meta.json mapping "<identity>/<photo>" (relative to DATA) to 0 (real) or 1 (deepfake);
- `challenge`: the Kryptonite layout DATA/images/<identity>/<n>.jpg + DATA/meta.json with keys relative to DATA/images;
  detected when `images/` is the only folder in DATA;
- `csv`: an explicit list `path,identity[,is_fake]` (header row required), paths relative to a root folder.

Why a module of its own: every path here comes from a file a user hands us, so this is where paths are kept inside the
dataset (no `..`, no absolute paths, no symbolic link leading out) and where a malformed labels file is turned into one
clear error *before* anything is written to the label store. Problems with single entries (a meta.json key naming a
missing file, say) do not stop the rest: they come back as `Refused` items naming the entry.

Example:
    >>> layout = read_layout("train")                  # the challenge layout: train/images + train/meta.json
    >>> layout.kind, layout.root.name, layout.entries[0]
    ('challenge', 'images', Entry(path='000000/0.jpg', identity='000000', is_fake=False))
    >>> read_layout(csv="labels.csv", root="photos").kind
    'csv'
"""
from __future__ import annotations

import csv as csvlib
import io
import json
import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labels.cli import UserError
from labels.imagefile import is_image_name, name_problem
from labels.store import StoreError, check_identity_name

LAYOUTS = ("folders", "challenge", "csv")
META_NAME = "meta.json"
CSV_COLUMNS = ("path", "identity", "is_fake")


class LayoutError(UserError):
    """The dataset cannot be read as a whole (malformed meta.json or CSV, not a folder, no photos): nothing ingested."""


@dataclass(frozen=True)
class Entry:
    """One photo: `path` relative to the layout's root ('/'-separated), its identity and whether it is a deepfake."""

    path: str
    identity: str
    is_fake: bool = False


@dataclass(frozen=True)
class Refused:
    """An entry left out, as the user wrote it (a meta.json key, a CSV line, a path on disk), and why."""

    entry: str
    reason: str

    def __str__(self) -> str:
        return f"{self.entry}: {self.reason}"


# Kinds of what a dataset folder holds that is not used, each named in the ingest summary and ingest_problems.csv.
SKIP_KINDS = {
    "unsupported_format": "photo(s) in a format this tool cannot read",
    "not_a_photo": "file(s) that are not photos (by their name)",
    "outside_identity_folder": "photo(s) not inside an identity folder",
    "not_a_regular_file": "entries that are not regular files",
    "empty_identity_folder": "identity folder(s) without a photo",
}


@dataclass(frozen=True)
class Skipped:
    """Something in the dataset folder that is not a photo of an identity: `entry` relative to the root ('/'-separated,
    folders end in '/'), `kind` one of SKIP_KINDS, `reason` in words (the format and what to do about it)."""

    entry: str
    kind: str
    reason: str


@dataclass
class Layout:
    """What read_layout found. `root` is absolute and resolved; entry paths are relative to it."""

    kind: str
    root: Path
    entries: list[Entry]
    refused: list[Refused] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # every file and identity folder left out, by name
    hidden: int = 0  # hidden files and folders (names starting with '.'), left out by design and only counted
    unlisted: list[str] = field(default_factory=list)  # photos on disk that meta.json does not name (counted real)
    labels_file: Path | None = None  # the meta.json or CSV the labels came from


def detect_layout(data: str | Path) -> str:
    """'challenge' when DATA holds an `images/` folder and no other folder, else 'folders'."""
    data = Path(data)
    folders = [e.name for e in os.scandir(data) if e.is_dir() and not e.name.startswith(".")]
    return "challenge" if folders == ["images"] else "folders"


def read_layout(
    data: str | Path | None = None,
    *,
    csv: str | Path | None = None,
    root: str | Path | None = None,
    exclude: Sequence[str | Path] = (),
) -> Layout:
    """Read a dataset folder (layout detected) or a CSV list into entries, refusing what points outside the root.

    data: the dataset folder (`folders` or `challenge` layout); leave None when `csv` is given.
    csv: a CSV file `path,identity[,is_fake]`; its paths are relative to `root` (default: the CSV's folder).
    exclude: folders never to read photos from (ingest passes the work folder, which may sit inside the dataset).
    Raises LayoutError for anything that makes the whole input unusable; nothing is written anywhere.
    """
    excluded = tuple(Path(p).expanduser().resolve() for p in exclude)
    if csv is not None:
        if data is not None:
            raise LayoutError("give either a dataset folder or --csv, not both (use --root for the CSV's photo folder)")
        csv = Path(csv).expanduser().resolve()
        root = _existing_folder(Path(root) if root is not None else csv.parent)
        entries, refused = _read_csv(csv, root, excluded)
        layout = Layout("csv", root, entries, refused, labels_file=csv)
    else:
        if data is None:
            raise LayoutError("no dataset given: pass the dataset folder, or --csv FILE")
        if root is not None:
            raise LayoutError("--root is only for --csv (a dataset folder is its own root)")
        data = _existing_folder(Path(data))
        kind = detect_layout(data)
        root = data / "images" if kind == "challenge" else data
        files, refused, skipped, hidden = _scan(root, excluded)
        meta = data / META_NAME
        layout = Layout(kind, root, [], refused, skipped, hidden, labels_file=meta if meta.is_file() else None)
        _label_files(layout, files, excluded)
    if not layout.entries:
        where = layout.labels_file if layout.kind == "csv" else layout.root
        raise LayoutError(f"{where}: no photos found ({_expected(layout.kind)})")
    layout.entries.sort(key=lambda e: e.path)
    return layout


# ---- folders and challenge ------------------------------------------------------------------------------------------
def _existing_folder(path: Path) -> Path:
    path = path.expanduser()
    if not path.is_dir():
        raise LayoutError(f"{path}: not a folder" if path.exists() else f"{path}: no such folder")
    return path.resolve()


def _expected(kind: str) -> str:
    return {
        "folders": "expected DATA/<identity>/<photo>.jpg, optionally with DATA/meta.json",
        "challenge": "expected DATA/images/<identity>/<n>.jpg and DATA/meta.json",
        "csv": "expected a header path,identity[,is_fake] and one row per photo",
    }[kind]


def _scan(root: Path, excluded: tuple[Path, ...]) -> tuple[list[str], list[Refused], list[Skipped], int]:
    """Every photo under root, relative and sorted, plus what was refused, what was skipped (named) and how many
    hidden entries were passed over.

    Folder symlinks are not followed (they would either leave the dataset or count photos twice); file symlinks are
    kept only when they resolve inside the root. Files directly in root are not in an identity folder: image names there
    are skipped by name, anything else (README, meta.json, manifest.json) is ignored. An identity folder that ends up
    with no photo (empty, or holding only files that are not photos) is named too.
    """
    files: list[str] = []
    refused: list[Refused] = []
    skipped: list[Skipped] = []
    hidden = 0
    photos_in: Counter = Counter()  # identity folder -> photos found under it
    identity_folders: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            listing = list(os.scandir(root / rel_dir))
        except OSError as exc:
            refused.append(Refused(rel_dir + "/", f"cannot list folder ({exc.strerror or exc})"))
            continue
        for e in listing:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            if e.name.startswith("."):
                hidden += 1
                continue
            if not _utf8(e.name):
                refused.append(Refused(os.fsencode(rel).decode("utf-8", "backslashreplace"), "name is not valid UTF-8"))
                continue
            if e.is_dir(follow_symlinks=False):
                if root / rel not in excluded:
                    stack.append(rel)
                    if not rel_dir:
                        identity_folders.append(rel)
                continue
            if e.is_symlink():
                problem = _symlink_problem(root, e.path)
                if problem:
                    refused.append(Refused(rel, problem))
                    continue
            problem = name_problem(e.name)
            if not e.is_file():
                skipped.append(Skipped(rel, "not_a_regular_file", "not a regular file (a pipe, socket or device)"))
            elif problem is not None:
                if rel_dir:
                    kind = "unsupported_format" if problem.startswith("unsupported") else "not_a_photo"
                    skipped.append(Skipped(rel, kind, problem))
            elif not rel_dir:
                skipped.append(Skipped(rel, "outside_identity_folder", "photos go in DATA/<identity>/, not DATA/"))
            else:
                files.append(rel)
                photos_in[rel.split("/", 1)[0]] += 1
    for folder in identity_folders:
        if not photos_in[folder]:
            others = sum(1 for s in skipped if s.entry.startswith(folder + "/"))
            why = f"no photo in it ({others} other file(s), listed too)" if others else "empty folder"
            skipped.append(Skipped(folder + "/", "empty_identity_folder", why))
    files.sort()
    skipped.sort(key=lambda s: s.entry)
    return files, refused, skipped, hidden


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come back from os.scandir as lone surrogates
        return False
    return True


def _symlink_problem(root: Path, path: str) -> str | None:
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(root):
        return "symbolic link pointing outside the dataset"
    if target.is_dir():
        return "symbolic link to a folder (not followed)"
    if not target.exists():
        return "broken symbolic link"
    return None


def _label_files(layout: Layout, files: list[str], excluded: tuple[Path, ...]) -> None:
    """Fill layout.entries from the scanned files and meta.json (when there is one)."""
    fake: dict[str, bool] = {}
    if layout.labels_file is not None:
        listed = set(files)
        by_nfc: dict[str, str] | None = None
        meta = _read_meta(layout.labels_file)
        for key, value in meta.items():
            rel, problem = _relative(key, listed.__contains__)
            if rel is not None and rel not in listed:
                if by_nfc is None:  # a meta.json written on macOS may spell accents differently from the disk
                    by_nfc = {unicodedata.normalize("NFC", f): f for f in files}
                match = by_nfc.get(unicodedata.normalize("NFC", rel))
                if match is None:
                    problem = _file_problem(layout.root, rel, excluded, identity_folder=True) or (
                        "not among the photos found (inside a symbolic link to a folder?)"
                    )
                rel = match
            if problem:
                layout.refused.append(Refused(f"{META_NAME} {json.dumps(key, ensure_ascii=False)}", problem))
            elif fake.setdefault(rel, bool(value)) != bool(value):
                raise LayoutError(f"{layout.labels_file}: {rel!r} is listed twice (spelled two ways) as 0 and as 1")
        if meta and files and not fake:
            raise LayoutError(
                f"{layout.labels_file}: none of its {len(meta):,} entries names a photo found under {layout.root}"
                f" (e.g. {next(iter(meta))!r}); keys must be relative to that folder, like {files[0]!r}"
            )
        layout.unlisted = [f for f in files if f not in fake]
    bad_names = {i: identity_problem(i) for i in {f.split("/", 1)[0] for f in files}}
    for f in files:
        identity = f.split("/", 1)[0]
        if bad_names[identity]:
            layout.refused.append(Refused(f, bad_names[identity]))
        else:
            layout.entries.append(Entry(f, identity, fake.get(f, False)))


def _read_meta(path: Path) -> dict[str, int]:
    """meta.json as {key: 0|1}; LayoutError for anything else, naming the file and the first offenders."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        meta = json.loads(text, object_pairs_hook=_pairs_without_conflicts)
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise LayoutError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except ValueError as exc:
        raise LayoutError(f"{path}: {exc}") from exc
    if not isinstance(meta, dict):
        raise LayoutError(
            f'{path}: expected a JSON object mapping "<identity>/<photo>" to 0 (real) or 1 (deepfake),'
            f" found {type(meta).__name__}"
        )
    bad = [(k, v) for k, v in meta.items() if type(v) is not int or v not in (0, 1)]
    if bad:
        examples = ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(v)}" for k, v in bad[:3])
        raise LayoutError(f"{path}: {len(bad)} value(s) are not 0 (real) or 1 (deepfake), e.g. {examples}")
    return meta


def _pairs_without_conflicts(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise ValueError(f"{json.dumps(key, ensure_ascii=False)} appears twice with different values")
        out[key] = value
    return out


# ---- path checks shared by meta.json keys and CSV rows --------------------------------------------------------------
def _relative(text: str, exists: Callable[[str], bool] = lambda rel: False) -> tuple[str | None, str | None]:
    """A user-written path as a clean '/'-separated relative path, or (None, why it is refused).

    Backslashes and a leading 'X:' are read the Windows way (folders, a drive) unless the path as written names a
    file that `exists`: on Linux 'a\\b.jpg' is a legal file name, and an export of it must re-ingest.
    """
    if not text.strip():
        return None, "empty path"
    if "\x00" in text:
        return None, "path contains a NUL character"
    literal = [p for p in text.split("/") if p not in ("", ".")]
    if ("\\" in text or text[1:2] == ":") and literal and ".." not in literal and not text.startswith("/"):
        if exists("/".join(literal)):
            return "/".join(literal), None
    norm = text.replace("\\", "/")  # lists written on Windows
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":" and norm[0].isalpha()):
        return None, "absolute path (paths must be relative to the dataset)"
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None, "points outside the dataset ('..')"
    if not parts:
        return None, "empty path"
    return "/".join(parts), None


def _file_problem(root: Path, rel: str, excluded: tuple[Path, ...], *, identity_folder: bool) -> str | None:
    """Why `rel` (already clean) is not a photo we may read, or None when it is."""
    full = root / rel
    if not os.path.lexists(full):
        return "file does not exist"
    real = Path(os.path.realpath(full))
    if not real.is_relative_to(root):
        return "points outside the dataset (symbolic link)"
    if any(real.is_relative_to(x) or full.is_relative_to(x) for x in excluded):
        return "inside the work folder"
    if not real.is_file():
        return "not a file"
    if any(p.startswith(".") for p in rel.split("/")):
        return "hidden file"
    if not is_image_name(rel):
        return name_problem(rel)
    if identity_folder and "/" not in rel:
        return "not inside an identity folder"
    return None


# ---- csv ------------------------------------------------------------------------------------------------------------
def _read_csv(path: Path, root: Path, excluded: tuple[Path, ...]) -> tuple[list[Entry], list[Refused]]:
    rows = _parse_csv(path)
    entries, refused = [], []
    for line, raw_path, identity, is_fake in rows:
        where = f"{path.name} line {line} {json.dumps(raw_path, ensure_ascii=False)}"
        rel, problem = _relative(raw_path, lambda r: os.path.lexists(root / r))
        if rel is not None:
            problem = _file_problem(root, rel, excluded, identity_folder=False)
        if problem is None:
            problem = identity_problem(identity)
        if problem:
            refused.append(Refused(where, problem))
        else:
            entries.append(Entry(rel, identity.strip(), is_fake))
    seen: dict[str, Entry] = {}
    for e in entries:  # the same file spelled two ways ('a/x.jpg', './a/x.jpg') with different labels
        if seen.setdefault(e.path, e) != e:
            raise LayoutError(f"{path}: {e.path!r} is listed twice with different labels")
    return list(seen.values()), refused


def identity_problem(identity: str) -> str | None:
    """Why `identity` cannot be an identity folder (a path, '..', hidden), or None when it can."""
    try:
        name = check_identity_name(identity)
    except StoreError as exc:
        return str(exc)
    if name.startswith("."):
        return f"{name!r} is not a usable identity name (it would be a hidden folder)"
    return None


def _parse_csv(path: Path) -> list[tuple[int, str, str, bool]]:
    """(line, path, identity, is_fake) per row; LayoutError for a malformed file, listing the first bad lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise LayoutError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    reader = csvlib.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if not header:
            raise LayoutError(f"{path}: empty file ({_expected('csv')})")
        missing = [c for c in CSV_COLUMNS[:2] if c not in header]
        unknown = [h for h in header if h not in CSV_COLUMNS]
        if missing or unknown or len(set(header)) != len(header):
            raise LayoutError(
                f"{path}: the header must be path,identity[,is_fake]; found {','.join(header)!r}"
                + (f" (missing {', '.join(missing)})" if missing else "")
            )
        col = {name: header.index(name) for name in header}
        rows, errors, lines = [], [], {}
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                errors.append(f"line {line}: {len(fields)} field(s), expected {len(header)}")
                continue
            p, identity = fields[col["path"]], fields[col["identity"]]
            fake = fields[col["is_fake"]].strip() if "is_fake" in col else "0"
            if fake not in ("0", "1"):
                errors.append(f"line {line}: is_fake must be 0 or 1, found {fake!r}")
            elif not p.strip() or not identity.strip():
                errors.append(f"line {line}: empty {'path' if not p.strip() else 'identity'}")
            elif p in lines:
                errors.append(f"line {line}: {p!r} already listed on line {lines[p]}")
            else:
                lines[p] = line
                rows.append((line, p, identity, fake == "1"))
    except csvlib.Error as exc:
        raise LayoutError(f"{path}: line {reader.line_num}: {exc}") from exc
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise LayoutError(f"{path}: {len(errors)} malformed row(s): {'; '.join(errors[:3])}{more}")
    return rows
