"""Planted-noise benchmark: make a clean dataset noisy in known ways, then score the flags against the truth.

Why: precision and recall of a cleaner can only be measured where the errors are known. A user runs this on their own
clean identity folders to see how well the tool does on their domain before trusting it with a real noisy set.

What `plant` does to a folder of clean identity folders (hard links where possible, else copies; the source is never
modified), writing OUT/<folder>/<photo>, OUT/meta.json (deepfake marks) and OUT/truth.json:
- moves ~`fraction` of the photos into other identities' folders (each source keeps at least 60% of its photos);
- merges two identities into one folder (two people, one label: `split` should catch it);
- splits one identity across two folders (one person, two labels: `merge` should catch it);
- copies a few photos into other identities as well (`duplicate` should catch them);
- adds deepfake stand-ins: a mirrored copy of one of the identity's own photos (looks like it: must NOT be flagged) and a
  photo of someone else marked fake (`fake_mismatch` should catch it).

`score` compares WORK/flags.csv with truth.json:
- precision of outlier+minority flags: flagged photos that really show someone other than the folder's person
  (moved photos, copies, and the second person of the merged folder) / all flagged photos;
- recall on moved photos (the 10% the goal is stated for), and separately on copies and on the merged-in person;
- top-1 accuracy of suggested_identity on moved photos (right = a folder that holds that person's photos);
- whether the merged folder got a `split` flag and the split pair a `merge` flag; fake_mismatch precision/recall.

Example:
    python -m curation.flagging.noise plant ../shared/faces/lfw noisy --min-photos 10
    python -m curation.clean noisy --workdir work
    python -m curation.flagging.noise score work noisy/truth.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from labels.cli import UserError, command_parser, run_cli
from labels.imagefile import ImageError, is_image_name, read_rgb

TRUTH_NAME = "truth.json"


@dataclass
class NoisePlan:
    """Where every photo goes. photos: dest "<folder>/<file>" -> (source path relative to SRC, true person, kind)."""

    photos: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    fakes: dict[str, tuple[str, str, bool]] = field(default_factory=dict)  # dest -> (source, person, looks like folder)
    folder_person: dict[str, str] = field(default_factory=dict)
    merged: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)

    def truth(self, source: str, seed: int) -> dict:
        return {
            "source": source,
            "seed": seed,
            "folder_person": self.folder_person,
            "photos": {k: {"source": s, "person": p, "kind": kind} for k, (s, p, kind) in self.photos.items()},
            "fakes": {k: {"source": s, "person": p, "looks_like_folder": like} for k, (s, p, like) in self.fakes.items()},
            "merged": self.merged,
            "split": self.split,
        }


def plan_noise(
    identities: dict[str, list[str]],
    *,
    fraction: float = 0.10,
    n_duplicates: int = 5,
    fake_share: float = 0.3,
    seed: int = 0,
) -> NoisePlan:
    """Decide the noise on names only (identity -> photo file names); `plant` then makes the files.

    Needs at least 6 identities (two to merge, one to split, others to move photos between).
    """
    rng = np.random.default_rng(seed)
    names = sorted(identities)
    if len(names) < 6:
        raise UserError(f"planting noise needs at least 6 identities with enough photos, found {len(names)}")
    plan = NoisePlan()
    pick = rng.permutation(len(names))
    keep_a, merged_b, split_c = names[pick[0]], names[pick[1]], names[pick[2]]
    if len(identities[merged_b]) > len(identities[keep_a]):  # the folder keeps the name of its majority person
        keep_a, merged_b = merged_b, keep_a
    split_folder = f"{split_c}__2"
    folders = [x for x in names if x != merged_b] + [split_folder]
    plan.folder_person = {f: (split_c if f == split_folder else f) for f in folders}
    plan.merged = {"folder": keep_a, "people": [keep_a, merged_b]}
    plan.split = {"person": split_c, "folders": [split_c, split_folder]}

    home: dict[str, tuple[str, str]] = {}  # source "<identity>/<file>" -> (folder, kind)
    for name in names:
        files = sorted(identities[name])
        if name == merged_b:
            for f in files:
                home[f"{name}/{f}"] = (keep_a, "merged_in")
        elif name == split_c:
            half = set(rng.permutation(files)[: len(files) // 2].tolist())
            for f in files:
                home[f"{name}/{f}"] = (split_folder if f in half else name, "kept")
        else:
            for f in files:
                home[f"{name}/{f}"] = (name, "kept")
    # moved photos: from every identity but the merged pair, at most 40% of each
    movable = [k for k, (folder, kind) in home.items() if kind == "kept" and folder not in (keep_a,)]
    n_move = int(round(fraction * len(home)))
    per_source: dict[str, int] = {}
    for k in rng.permutation(movable):
        if n_move == 0:
            break
        person = k.split("/")[0]
        if per_source.get(person, 0) + 1 > 0.4 * len(identities[person]):
            continue
        targets = [f for f in folders if plan.folder_person[f] != person]
        home[k] = (targets[rng.integers(len(targets))], "moved")
        per_source[person] = per_source.get(person, 0) + 1
        n_move -= 1
    for k, (folder, kind) in sorted(home.items(), key=lambda kv: kv[1][1] != "kept"):  # kept photos keep their names
        person, file = k.split("/", 1)
        dest = f"{folder}/{file}"
        if dest in plan.photos:  # e.g. challenge-style 0.jpg, 1.jpg in every folder
            dest = f"{folder}/{person}_{file}"
        plan.photos[dest] = (k, person, kind)
    # duplicates: copies of kept photos into another person's folder
    kept = [k for k, (folder, kind) in home.items() if kind == "kept"]
    for k in rng.choice(kept, size=min(n_duplicates, len(kept)), replace=False):
        person, file = k.split("/", 1)
        targets = [f for f in folders if plan.folder_person[f] != person and f != keep_a]
        folder = targets[rng.integers(len(targets))]
        plan.photos[f"{folder}/dup_{person}_{file}"] = (k, person, "duplicate")
    # deepfake stand-ins: one mirrored own photo (looks right) and one other person's photo (looks wrong)
    for folder in rng.choice(folders, size=max(1, int(fake_share * len(folders))), replace=False):
        person = plan.folder_person[folder]
        own = [k for k, (f, kind) in home.items() if f == folder and kind == "kept"]
        others = [k for k, (f, kind) in home.items() if kind == "kept" and k.split("/")[0] != person]
        if own:
            src = own[rng.integers(len(own))]
            plan.fakes[f"{folder}/fake_mirror_{src.split('/', 1)[1]}"] = (src, person, True)
        src = others[rng.integers(len(others))]
        plan.fakes[f"{folder}/fake_other_{src.split('/', 1)[1]}"] = (src, src.split("/")[0], False)
    return plan


def synthetic_embeddings(
    n_identities: int,
    photos_per_identity: int = 10,
    dim: int = 512,
    *,
    moved: float = 0.05,
    split: int = 0,
    n_groups: int = 256,
    group_weight: float = 0.25,
    photo_weight: float = 0.75,
    seed: int = 0,
    chunk: int = 100_000,
    path: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planted noise without photos: clustered unit embeddings for scale benchmarks and tests.

    Identity centres are drawn around `n_groups` group directions (weight `group_weight`), because real face embeddings
    are not isotropic: people cluster by age, sex, ethnicity and capture conditions, and that structure is what lets an
    approximate index (IVF) find the right cells. A photo is `photo_weight` its identity centre plus isotropic noise
    (same-person cosine ~ photo_weight^2). Identity sizes vary between half and 1.5x `photos_per_identity` (at least 2).
    Then a `moved` share of photos get a wrong identity label, and the photos of `split` identities are split over two
    labels: the second half of identity j (j < split) gets the new code n_identities + j (a merge to find).
    path: write the embeddings to this .npy file chunk by chunk (returned as a memory map), for sets larger than RAM;
    the numbers are the same as in memory.
    Returns (float16 [N, dim] unit rows, given identity code [N], true identity code [N]).
    """
    rng = np.random.default_rng(seed)
    lo = max(2, photos_per_identity // 2)
    sizes = rng.integers(lo, max(lo + 1, (3 * photos_per_identity) // 2 + 1), n_identities)
    truth = np.repeat(np.arange(n_identities), sizes)
    n = len(truth)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    groups = unit(rng.standard_normal((n_groups, dim), dtype=np.float32))
    centres = unit(
        np.sqrt(group_weight) * groups[rng.integers(0, n_groups, n_identities)]
        + np.sqrt(1 - group_weight) * unit(rng.standard_normal((n_identities, dim), dtype=np.float32))
    )
    shape = (n, dim)
    emb = np.empty(shape, np.float16) if path is None else np.lib.format.open_memmap(path, "w+", np.float16, shape)
    for s in range(0, n, chunk):
        part = truth[s : s + chunk]
        noise_part = unit(rng.standard_normal((len(part), dim), dtype=np.float32))
        emb[s : s + chunk] = unit(photo_weight * centres[part] + np.sqrt(1 - photo_weight**2) * noise_part)
    given = truth.copy()
    pick = rng.choice(n, int(round(moved * n)), replace=False)
    given[pick] = (truth[pick] + rng.integers(1, n_identities, len(pick))) % n_identities
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for j in range(min(split, n_identities)):
        half = np.arange(starts[j] + sizes[j] // 2, starts[j] + sizes[j])
        given[half[given[half] == j]] = n_identities + j
    return emb, given, truth


def list_identities(
    src: str | Path, min_photos: int = 10, max_identities: int | None = None, max_photos: int | None = None
) -> dict[str, list[str]]:
    """identity folder -> photo file names (the first `max_photos`), for folders with at least `min_photos` photos."""
    src = Path(src)
    out = {}
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f.name for f in d.iterdir() if f.is_file() and is_image_name(f.name))
        if len(files) >= min_photos:
            out[d.name] = files[:max_photos]
        if max_identities and len(out) >= max_identities:
            break
    return out


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def plant(
    src: str | Path,
    out: str | Path,
    *,
    min_photos: int = 10,
    max_identities: int | None = None,
    max_photos: int | None = None,
    fraction: float = 0.10,
    n_duplicates: int = 5,
    seed: int = 0,
) -> dict:
    """Build the noisy copy of SRC in OUT (which must be empty or absent) and return the truth (also OUT/truth.json)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder of identity folders")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty (pick a new folder for the noisy copy)")
    identities = list_identities(src, min_photos, max_identities, max_photos)
    plan = plan_noise(identities, fraction=fraction, n_duplicates=n_duplicates, seed=seed)
    for dest, (source, _, _) in plan.photos.items():
        _link(src / source, out / dest)
    meta = {dest: 0 for dest in plan.photos}
    for dest, (source, _, mirrored) in plan.fakes.items():
        (out / dest).parent.mkdir(parents=True, exist_ok=True)
        if mirrored:
            try:
                Image.fromarray(read_rgb(src / source)[:, ::-1]).save(out / dest, quality=95)
            except ImageError as exc:
                print(f"skipping fake stand-in {dest}: {exc}", file=sys.stderr)
                continue
        else:
            _link(src / source, out / dest)
        meta[dest] = 1
    truth = plan.truth(str(src), seed)
    truth["fakes"] = {k: v for k, v in truth["fakes"].items() if k in meta}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    (out / TRUTH_NAME).write_text(json.dumps(truth, indent=1, sort_keys=True))
    return truth


def _key(image: str) -> str:
    """The "<folder>/<file>" tail of an ingested path (the noisy copy may sit inside a larger dataset folder)."""
    parts = str(image).replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def score(flags: pd.DataFrame, truth: dict) -> dict:
    """Precision/recall of the flags against the planted truth (see the module docstring for the definitions).

    flags: flags.csv as a DataFrame (image, identity, flag, suggested_identity, ...).
    """
    photos = truth["photos"]
    folder_person = truth["folder_person"]
    wrong = {k for k, v in photos.items() if v["person"] != folder_person[k.split("/")[0]]}
    moved = {k for k, v in photos.items() if v["kind"] == "moved"}
    copies = {k for k, v in photos.items() if v["kind"] == "duplicate"}
    merged_in = {k for k in wrong if photos[k]["kind"] == "merged_in"}
    f = flags.copy()
    f["key"] = f["image"].fillna("").map(_key)
    noisy = f[f.flag.isin(["outlier", "minority"])]
    flagged = set(noisy.key)
    tp = flagged & wrong

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    sugg = dict(zip(noisy.key, noisy.suggested_identity))
    right = sum(1 for k in moved & flagged if folder_person.get(str(sugg.get(k)), None) == photos[k]["person"])
    merged_folder = truth["merged"]["folder"]
    split_folders = set(truth["split"]["folders"])
    merges = f[f.flag == "merge"]
    merge_caught = any({a, b} == split_folders for a, b in zip(merges.identity, merges.suggested_identity))
    fakes = truth["fakes"]
    bad_fakes = {k for k, v in fakes.items() if not v["looks_like_folder"]}
    fm = set(f[f.flag == "fake_mismatch"].key)
    dups = set(f[f.flag == "duplicate"].key)
    return {
        "photos": len(photos),
        "wrong_photos": len(wrong),
        "moved": len(moved),
        "flagged_outlier_minority": len(flagged),
        "precision": ratio(len(tp), len(flagged)),
        "recall_moved": ratio(len(moved & flagged), len(moved)),
        "recall_copies": ratio(len(copies & flagged), len(copies)),
        "recall_merged_in": ratio(len(merged_in & flagged), len(merged_in)),
        "suggested_top1_moved": ratio(right, len(moved & flagged)),
        "split_caught": bool(((f.flag == "split") & (f.identity == merged_folder)).any()),
        "merge_caught": merge_caught,
        "merge_flags": len(merges),
        "split_flags": int((f.flag == "split").sum()),
        "duplicate_recall": ratio(len(copies & dups), len(copies)),
        "duplicate_flags": len(dups),
        "fake_mismatch_precision": ratio(len(fm & bad_fakes), len(fm)),
        "fake_mismatch_recall": ratio(len(fm & bad_fakes), len(bad_fakes)),
    }


def flag_truth(flags: pd.DataFrame, truth: dict) -> np.ndarray:
    """Whether each flag is right by the planted truth: what a reviewer who knew the truth would confirm.

    flags: one row per flag with kind, image (path as ingested; None for identity-level flags), identity,
    suggested_identity and details (JSON text or dict), as `LabelStore.flags()` gives them.
    - outlier, minority: the photo shows someone other than its folder's person (moved, copied or merged in);
    - duplicate: the photo and its `duplicate_of` are copies of one source photo;
    - fake_mismatch: the deepfake stand-in shows someone else (not a mirrored photo of the folder's person);
    - merge: both folders hold the same person; split: the folder holds two people (the merged pair);
    - no_face, weak_alignment: wrong (every photo planted here shows a face: a detector miss, which a reviewer
      keeps); unreadable: right. A flag on a photo the truth does not know, or of a kind not listed, counts as wrong.
    """
    photos, fakes, folder_person = truth["photos"], truth["fakes"], truth["folder_person"]
    merged = truth["merged"]["folder"]

    def source(image) -> str | None:
        key = _key(image)
        entry = photos.get(key) or fakes.get(key)
        return entry["source"] if entry else None

    def right(f) -> bool:
        key = _key(f.image) if isinstance(f.image, str) else None
        if f.kind in ("outlier", "minority"):
            return key in photos and photos[key]["person"] != folder_person.get(key.split("/")[0])
        if f.kind == "duplicate":
            details = json.loads(f.details) if isinstance(f.details, str) else dict(f.details or {})
            mine, other = source(f.image), source(details.get("duplicate_of", ""))
            return mine is not None and mine == other
        if f.kind == "fake_mismatch":
            return key in fakes and not fakes[key]["looks_like_folder"]
        if f.kind == "merge":
            a, b = folder_person.get(f.identity), folder_person.get(f.suggested_identity)
            return a is not None and a == b
        if f.kind == "split":
            return f.identity == merged
        return f.kind == "unreadable"

    return np.array([right(f) for f in flags.itertuples()], dtype=bool)


def format_score(s: dict) -> str:
    """The figures as a short block of text for the terminal."""

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    return "\n".join(
        [
            f"planted: {s['moved']} moved photos, {s['wrong_photos']} photos under a wrong label in all, of {s['photos']}",
            f"outlier+minority: {s['flagged_outlier_minority']} flagged, precision {pct(s['precision'])}, "
            f"recall on moved photos {pct(s['recall_moved'])} (copies {pct(s['recall_copies'])}, "
            f"merged-in person {pct(s['recall_merged_in'])})",
            f"suggested identity right (top-1) for {pct(s['suggested_top1_moved'])} of the flagged moved photos",
            f"two people in one folder caught as split: {'yes' if s['split_caught'] else 'NO'}; "
            f"one person in two folders caught as merge: {'yes' if s['merge_caught'] else 'NO'} "
            f"({s['split_flags']} split, {s['merge_flags']} merge flags in all)",
            f"duplicates: recall {pct(s['duplicate_recall'])} ({s['duplicate_flags']} flagged); "
            f"fake_mismatch: precision {pct(s['fake_mismatch_precision'])}, recall {pct(s['fake_mismatch_recall'])}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(
        "python -m curation.flagging.noise",
        "Plant known label noise in clean identity folders, and score a clean run against it.",
        __doc__.split("Example:")[1],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plant", help="build a noisy copy of clean identity folders (+ truth.json)")
    p.add_argument("src", help="folder of clean identity folders")
    p.add_argument("out", help="new folder for the noisy copy")
    p.add_argument("--min-photos", type=int, default=10, help="use identities with at least this many photos (10)")
    p.add_argument("--max-identities", type=int, default=None, help="use at most this many identities")
    p.add_argument("--max-photos", type=int, default=None, help="use at most this many photos per identity")
    p.add_argument("--fraction", type=float, default=0.10, help="share of photos moved to wrong identities (0.10)")
    p.add_argument("--duplicates", type=int, default=5, help="photos copied into other identities (5)")
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="score WORK/flags.csv against truth.json")
    s.add_argument("workdir")
    s.add_argument("truth")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if args.command == "plant":
        truth = plant(
            args.src, args.out, min_photos=args.min_photos, max_identities=args.max_identities,
            max_photos=args.max_photos, fraction=args.fraction, n_duplicates=args.duplicates, seed=args.seed,
        )
        n_moved = sum(v["kind"] == "moved" for v in truth["photos"].values())
        print(
            f"wrote {args.out}: {len(truth['folder_person'])} folders, {len(truth['photos'])} photos "
            f"({n_moved} moved), {len(truth['fakes'])} deepfake stand-ins; truth in {Path(args.out) / TRUTH_NAME}"
        )
        return
    flags_csv = Path(args.workdir) / "flags.csv"
    if not flags_csv.is_file():
        raise UserError(f"{flags_csv}: not found (run python -m curation.clean first)")
    try:
        truth = json.loads(Path(args.truth).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{args.truth}: not a truth.json written by `plant` ({exc})") from None
    print(format_score(score(pd.read_csv(flags_csv, dtype={"image": str}), truth)))


if __name__ == "__main__":
    sys.exit(main())
