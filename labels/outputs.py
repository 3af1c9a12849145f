"""Output folders this tool owns: a command replaces or deletes only files it wrote itself, and says so when it cannot.

Why: an output folder is a path a person types. `export --overwrite` once deleted any folder holding a file named
manifest.json, and with it a user's thesis.tex. Every command that writes a folder (labels.export, curation.fakes, a
training run, curation.evaluate; curation.predict's files) now follows one rule, kept here:

- a folder is ours when it holds `manifest.json` with the tool's signature (`"tool": "facecur"`), the command that
  wrote it, and `files`: every file the command wrote there ('/'-separated, relative). The manifest is a plain dict:
  commands add their own keys (export: counts, changes, ...);
- a command writes into a folder that is absent, empty, or ours and of the same command; anything else is refused
  with the folder and the reason (not empty and no manifest, a manifest that is not ours, another command's output);
- a file is listed *before* it is written (`add`, `write`), so a kill at any moment leaves no file of ours unlisted,
  and a file that exists but is not listed is never overwritten;
- deleting takes exactly the listed files (and `atomic_write` temporaries of them), then the folders left empty;
  anything else stays where it is and is reported (`unlisted`, `remove_all`);
- `replacing(out, ...)` builds a new folder beside OUT and swaps it in (one atomic exchange on Linux, two renames
  elsewhere), so OUT is always the old output or the whole new one; leftovers of a killed run (hidden
  `.OUT.partial-PID` / `.OUT.old-PID`) are swept on the next run.

Files another writer manages (an embedding cache, TensorBoard logs) live in `managed` sub-folders: their contents are
neither listed nor ever deleted from here.

Example:
    >>> out = OutputFolder.claim("eval/run1", "curation.evaluate")   # absent, empty or an earlier evaluation
    >>> out.write("metrics.json", text)                               # listed first, then written atomically
    >>> with replacing(Path("clean"), "labels.export", overwrite=True) as new:
    ...     new.add("a/1.jpg"); os.link(src, new.path("a/1.jpg")); new.save(counts={...})
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

from labels.cli import UserError
from labels.files import atomic_write, temp_target, write_json

TOOL = "facecur"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
RESERVED_KEYS = ("tool", "command", "manifest_version", "files", "managed")
_SHOW = 3  # unlisted files named in a refusal before "and N more"


class OutputFolderError(UserError):
    """A command may not write (or replace) this folder; the message names it and says why."""


def _rel(text: str, where: str) -> str:
    """A clean relative '/'-separated path inside the folder, or OutputFolderError."""
    text = str(text)
    windows = os.name == "nt"  # there '\\' separates folders and 'C:x' is on another disk; elsewhere both are names
    parts = (PureWindowsPath if windows else PurePosixPath)(text).parts
    drive = windows and PureWindowsPath(text).drive
    if drive or not parts or text.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise OutputFolderError(f"{where}: {text!r} is not a path inside the folder")
    return "/".join(parts)


def _ancestors(rel: str) -> Iterator[str]:
    parts = rel.split("/")
    for k in range(1, len(parts)):
        yield "/".join(parts[:k])


class OutputFolder:
    """A folder (or, with `shared`, a set of files in someone else's folder) this tool wrote, and its manifest.

    Make one with `claim` (to write) or `inspect` (to look); the constructor does no checking.
    """

    def __init__(self, root: Path, command: str, manifest: dict, manifest_name: str = MANIFEST, shared: bool = False):
        self.root = Path(root)
        self.command = command
        self.manifest = manifest
        self.manifest_name = manifest_name
        self.shared = shared
        self._files = set(manifest.get("files", []))
        self._managed = set(manifest.get("managed", []))
        self.notes: list[str] = []  # what `replacing` kept and why, for the command's summary

    # ---- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def inspect(
        cls, path: str | Path, command: str, *, manifest_name: str = MANIFEST, shared: bool = False
    ) -> OutputFolder | None:
        """The folder as `command` finds it, without writing: None when it is absent or empty (free to use), else the
        OutputFolder of an earlier run of `command`. Raises OutputFolderError when the folder is not one `command` may
        write: not a folder, not empty and no manifest (unless `shared`), a manifest that is not ours, or another
        command's output."""
        root = Path(path).expanduser().absolute()
        manifest_path = root / manifest_name
        if root.exists() and not root.is_dir():
            raise OutputFolderError(f"{root} exists and is not a folder")
        if not manifest_path.is_file():
            if not root.is_dir() or shared:
                return None
            entries = sorted(e.name for e in os.scandir(root))
            if not entries:
                return None
            shown = ", ".join(entries[:_SHOW]) + (f" and {len(entries) - _SHOW} more" if len(entries) > _SHOW else "")
            raise OutputFolderError(
                f"{root} is not empty and holds no {manifest_name}, so this tool did not write it (it holds {shown}):"
                " choose another folder, or an empty one"
            )
        manifest = _read_manifest(manifest_path)
        if manifest["command"] != command:
            raise OutputFolderError(
                f"{root} holds the output of `python -m {manifest['command']}`, not of {command}: choose another folder"
            )
        return cls(root, command, manifest, manifest_name, shared)

    @classmethod
    def claim(
        cls, path: str | Path, command: str, *, manifest_name: str = MANIFEST, shared: bool = False
    ) -> OutputFolder:
        """The folder to write: an earlier output of `command`, or a new one (created with its manifest at the first
        `add`, `write`, `manage` or `save`, so a command that fails before writing leaves nothing). Refuses what
        `inspect` refuses."""
        found = cls.inspect(path, command, manifest_name=manifest_name, shared=shared)
        if found is not None:
            return found
        return cls(Path(path).expanduser().absolute(), command, {}, manifest_name, shared)

    # ---- what is listed ----------------------------------------------------------------------------------------
    @property
    def files(self) -> frozenset[str]:
        return frozenset(self._files)

    @property
    def manifest_path(self) -> Path:
        return self.root / self.manifest_name

    def path(self, rel: str) -> Path:
        """The absolute path of a file of this folder (not necessarily listed yet)."""
        return self.root / _rel(rel, str(self.root))

    def check(self, *rels: str) -> list[str]:
        """Refuse (OutputFolderError) to write a file that exists and is not listed: it is someone else's, and writing
        it would destroy it. Returns the files not listed yet; writes nothing."""
        new: list[str] = []
        for rel in rels:
            rel = _rel(rel, str(self.root))
            if rel in self._files or rel in new:
                continue
            if rel == self.manifest_name or os.path.lexists(self.root / rel):
                raise OutputFolderError(
                    f"{self.root / rel} exists and was not written by this tool: move it away, or choose another folder"
                )
            new.append(rel)
        return new

    def add(self, *rels: str) -> None:
        """List files before writing them (one manifest write for all); refuses what `check` refuses."""
        new = self.check(*rels)
        if new:
            self._files.update(new)
            self.save()

    def manage(self, rel_dir: str) -> None:
        """Hand a sub-folder to another writer (a cache, a logger): its contents are never listed nor deleted here."""
        rel_dir = _rel(rel_dir, str(self.root))
        if rel_dir not in self._managed:
            self._managed.add(rel_dir)
            self.save()

    def write(self, rel: str, content, *, durable: bool = True) -> Path:
        """`add` then `labels.files.atomic_write` (content: bytes, text, or a callback writing a temporary path)."""
        self.add(rel)
        return atomic_write(self.root / rel, content, durable=durable)

    def save(self, **keys) -> None:
        """Write the manifest (atomically) with the current file list; `keys` are the command's own entries."""
        bad = [k for k in keys if k in RESERVED_KEYS]
        if bad:
            raise ValueError(f"manifest keys {bad} are the output folder's own")
        body = {k: v for k, v in self.manifest.items() if k not in RESERVED_KEYS}
        body.update(keys)
        self.manifest = {
            "tool": TOOL, "command": self.command, "manifest_version": MANIFEST_VERSION, **body,
            "files": sorted(self._files), **({"managed": sorted(self._managed)} if self._managed else {}),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest_path, self.manifest, ensure_ascii=False)

    # ---- deleting ------------------------------------------------------------------------------------------------
    def delete(self, *rels: str) -> None:
        """Delete listed files (and folders they leave empty), then drop them from the list. Unlisted: ValueError."""
        rels = [_rel(r, str(self.root)) for r in rels]
        if not rels:
            return
        foreign = [r for r in rels if r not in self._files]
        if foreign:
            raise ValueError(f"{self.root}: {foreign} are not listed, so they are not this tool's to delete")
        for rel in rels:
            for temp in self._temps_of(rel):
                (self.root / temp).unlink(missing_ok=True)
            (self.root / rel).unlink(missing_ok=True)
        self._files.difference_update(rels)
        self.save()
        for parent in sorted({a for r in rels for a in _ancestors(r)}, key=lambda a: -a.count("/")):
            _rmdir_if_empty(self.root / parent)

    def _temps_of(self, rel: str) -> list[str]:
        """The atomic_write temporaries of `rel` that a kill left beside it."""
        folder, _, name = rel.rpartition("/")
        where = self.root / folder
        if not where.is_dir():
            return []
        return [f"{folder}/{e.name}" if folder else e.name for e in os.scandir(where) if temp_target(e.name) == name]

    def _ours(self, rel: str) -> bool:
        """A listed file, the manifest, or an atomic_write temporary of either."""
        if rel in self._files or rel == self.manifest_name:
            return True
        folder, _, name = rel.rpartition("/")
        target = temp_target(name)
        return target is not None and self._ours(f"{folder}/{target}" if folder else target)

    def _walk(self) -> Iterator[tuple[str, bool]]:
        """(relative path, is a folder) of everything outside managed folders; symbolic links count as files."""
        if self.shared:  # only the listed files are ours; the folder around them is not looked at
            for rel in sorted(self._files | {self.manifest_name}):
                if os.path.lexists(self.root / rel):
                    yield rel, False
                for temp in self._temps_of(rel):
                    yield temp, False
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            prefix = "" if rel_dir == "." else rel_dir + "/"
            keep = []
            for d in dirnames:
                rel = prefix + d
                if rel in self._managed:
                    continue
                if os.path.islink(os.path.join(dirpath, d)):
                    yield rel, False
                else:
                    keep.append(d)
                    yield rel, True
            dirnames[:] = keep
            for name in filenames:
                yield prefix + name, False

    def _parents(self) -> set[str]:
        return {a for f in self._files for a in _ancestors(f)} | {a for m in self._managed for a in _ancestors(m)}

    def unlisted(self) -> list[str]:
        """What the folder holds that this tool did not write, sorted: files, and empty folders (ending in '/') that
        hold no listed file; [] when everything is ours (always for `shared`, where only listed files are looked at)."""
        if self.shared:
            return []
        parents = self._parents()
        return sorted(
            rel + "/" if is_dir else rel for rel, is_dir in self._walk()
            if (is_dir and rel not in parents and not any(os.scandir(self.root / rel)))
            or (not is_dir and not self._ours(rel))
        )

    def remove_temps(self) -> None:
        """Delete `atomic_write` temporaries of listed files, which only a kill leaves behind."""
        for rel, is_dir in list(self._walk()):
            if not is_dir and rel not in self._files and rel != self.manifest_name and self._ours(rel):
                (self.root / rel).unlink(missing_ok=True)

    def remove_all(self) -> list[str]:
        """Delete every listed file, their temporaries and the folders left empty; the manifest goes last, and only
        when nothing else is left (so a killed removal is finished by the next one). Returns what was left (unlisted
        files, managed folders), which is kept."""
        parents = self._parents()
        for rel, is_dir in list(self._walk()):
            if not is_dir and rel != self.manifest_name and self._ours(rel):
                (self.root / rel).unlink(missing_ok=True)
        for parent in sorted(parents, key=lambda a: -a.count("/")):
            if parent not in self._managed and not self.shared:
                _rmdir_if_empty(self.root / parent)
        self._files.clear()
        left = self.unlisted() + [m + "/" for m in sorted(self._managed) if (self.root / m).exists()]
        if left:
            self.save()
            return left
        self.manifest_path.unlink(missing_ok=True)
        if not self.shared:
            _rmdir_if_empty(self.root)
        return []


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


def _read_manifest(path: Path) -> dict:
    """A manifest this tool wrote, checked: signature, version, command, and listed paths that stay inside."""
    not_ours = f"{path} is not a manifest this tool wrote"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputFolderError(f"{not_ours} (not readable JSON: {exc}); choose another folder") from None
    if not isinstance(manifest, dict) or manifest.get("tool") != TOOL or not isinstance(manifest.get("command"), str):
        raise OutputFolderError(f'{not_ours} (no "tool": "{TOOL}" signature); choose another folder')
    version = manifest.get("manifest_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise OutputFolderError(f"{path}: manifest version {version!r}; this tool reads version {MANIFEST_VERSION}")
    for key in ("files", "managed"):
        listed = manifest.get(key, [])
        if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
            raise OutputFolderError(f"{not_ours} ({key!r} is not a list of paths); choose another folder")
        for rel in listed:  # a hand-made manifest must never make a deletion leave the folder
            try:
                _rel(rel, str(path))
            except OutputFolderError:
                raise OutputFolderError(f"{not_ours} (it lists {rel!r}, outside the folder); choose another folder"
                                        ) from None
    return manifest


# ---- replacing a whole folder -------------------------------------------------------------------------------------
_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)$")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(out: Path, command: str) -> list[str]:
    """Remove what killed runs of `command` left beside OUT (their hidden build and swap folders); returns notes."""
    notes = []
    if not out.parent.is_dir():
        return notes
    for e in os.scandir(out.parent):
        match = _SIBLING.match(e.name)
        if not match or match["name"] != out.name or _alive(int(match["pid"])) or not e.is_dir(follow_symlinks=False):
            continue
        try:
            stale = OutputFolder.inspect(e.path, command)
        except OutputFolderError as exc:
            notes.append(f"left {e.path} alone: {exc}")
            continue
        left = stale.remove_all() if stale is not None else []
        if stale is None:
            _rmdir_if_empty(Path(e.path))
        if left:
            notes.append(f"{e.path} (left by an interrupted run) still holds {', '.join(left[:_SHOW])}: not ours, kept")
    return notes


def check_replaceable(out: Path, command: str, overwrite: bool) -> OutputFolder | None:
    """The earlier output in OUT that `replacing` would replace (None when OUT is absent or empty); refuses when OUT
    is not ours, or holds anything we did not write, or `overwrite` is off."""
    found = OutputFolder.inspect(out, command)
    if found is None:
        return None
    if not overwrite:
        raise OutputFolderError(f"{out} holds an earlier output of {command}: pass --overwrite to replace it")
    foreign = found.unlisted()
    if foreign:
        more = f" and {len(foreign) - _SHOW} more" if len(foreign) > _SHOW else ""
        raise OutputFolderError(
            f"{out} holds files this tool did not write ({', '.join(foreign[:_SHOW])}{more}), so --overwrite will not"
            " replace it: move them away, or choose another folder"
        )
    return found


@contextmanager
def replacing(out: str | Path, command: str, *, overwrite: bool = False) -> Iterator[OutputFolder]:
    """Build a new output of `command` in a hidden folder beside OUT and swap it in when the block ends.

    Before: OUT must be absent, empty or (with `overwrite`) an earlier output of `command` holding only what it listed
    (see `check_replaceable`); leftovers of killed runs are swept. On success OUT is the new folder and the old one's
    listed files are deleted (`yield`ed folder's `.root` is OUT, `.notes` says what was kept and why); on an
    exception the new folder is removed and OUT is untouched. A kill at any moment leaves OUT whole, the old output or
    the new (where folders cannot be exchanged in one step, a kill between the two renames leaves OUT absent, with
    both beside it; the next run builds OUT again and sweeps them).
    """
    out = Path(out).expanduser().absolute()
    check_replaceable(out, command, overwrite)
    notes = _sweep(out, command)
    build = out.with_name(f".{out.name}.partial-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        build.mkdir()
    except FileExistsError:
        raise OutputFolderError(f"{build} exists (another export in this process?): remove it, then export again"
                                ) from None
    new = OutputFolder(build, command, {})
    new.notes = notes
    aside = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        new.save()
        yield new
        old = check_replaceable(out, command, overwrite)  # again: OUT may have changed while the new one was built
        if old is None:
            os.rename(build, out)  # replaces an empty OUT in one step
        else:
            if _exchange(build, out):  # OUT is the old export, then the new one: never missing, never half
                old.root, new.root = build, out
            else:
                os.rename(out, aside)
                try:
                    os.rename(build, out)
                except OSError:
                    os.rename(aside, out)
                    raise
                old.root, new.root = aside, out
            left = old.remove_all()
            if left:
                notes.append(f"{old.root} kept: {', '.join(left[:_SHOW])} appeared in {out} while it was replaced")
    except BaseException:
        if new.root == build and build.exists():
            new.remove_all()
        raise
    new.root = out
