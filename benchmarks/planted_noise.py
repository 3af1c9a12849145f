"""Planted-noise benchmark on real photos: per noise pattern, how well do the flags find known label errors, beside the
best the one-line baseline can do on the same run?

1. Embeds the clean LFW identity folders (../shared/faces/lfw) and the glint24 aligned crops once, with the full
   `python -m curation.clean` (default: the offline dlib embedder; cached by file hash in --cache, so a second run
   embeds nothing);
2. per pattern of curation.flagging.patterns (random 10% / 25%, lookalikes, 3-5 photos of one wrong person, lookalike
   groups, identities of <= 6 photos, outsiders; `aligned` = random 10% on the glint24 crops) and seed, plants the
   noise in the labels, runs `python -m curation.clean --embeddings EMB.npy --index INDEX.csv` on it and scores the
   outlier+minority flags: precision / recall / F1, the suggested identity's accuracy, the "not in this dataset" rate,
   and the mean P(wrong identity) beside the planted share of wrong photos (does the probability read as one?);
3. beside it, in the same run, the centroid baseline (flag a photo whose cosine to its folder's leave-one-out mean is
   below t) with t tuned on that run's truth: an oracle no real user has.
`--files` also runs the files-level demo (`curation.clean --plant-noise`: merged and split folders, copies, deepfake
stand-ins) and prints its split / merge / duplicate / fake_mismatch figures.

    python benchmarks/planted_noise.py --cache ~/.cache/facecur/planted      # ~10 min the first time, then ~1 min
    python benchmarks/planted_noise.py --cache C --patterns lookalike cluster --seeds 0 1 2 --files
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation import clean  # noqa: E402
from curation.flagging import flag_embeddings  # noqa: E402
from curation.flagging.patterns import PATTERNS, Planted, oracle_baseline, plant_pattern, score_flags  # noqa: E402
from curation.workfolder import WorkFolder  # noqa: E402

SHARED = REPO.parent / "shared" / "faces"


def embedded(src: Path, work: Path, model: str, aligned: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit float32 embeddings, identity, path) of every embedded photo of SRC, cleaned once into WORK."""
    if not (work / "clean" / "nodes.parquet").is_file():
        argv = [str(src), "--workdir", str(work), "--model", model, "--no-progress"] + (["--aligned"] if aligned else [])
        if clean.main(argv) != 0:
            sys.exit(f"embedding {src} failed")
    folder = WorkFolder(work)
    nodes = pd.read_parquet(folder.nodes, columns=["path", "identity", "emb_row"])
    nodes = nodes[nodes.emb_row >= 0]
    emb = np.load(folder.embeddings, mmap_mode="r")
    return np.asarray(emb[nodes.emb_row.to_numpy()], np.float32), nodes.identity.to_numpy(), nodes.path.to_numpy()


def source_flags(emb, identity, paths) -> set:
    """Photos the clean flags in the unplanted source: the source's own errors (LFW has a handful of wrong labels, and
    photos whose central face is someone else). Scored as "wrong" by no planted truth, they are left out of the
    second set of figures, for the project and the baseline alike."""
    res = flag_embeddings(emb, identity, device="cpu")
    rows = res.flags[res.flags.flag.isin(["outlier", "minority"])].row.to_numpy()
    return set(paths[rows])


def run_pattern(emb, identity, paths, pattern: str, seed: int, out: Path, min_photos: int, known: set,
                label: str | None = None) -> dict:
    planted = plant_pattern(identity, emb, pattern, seed=seed, min_photos=min_photos)
    label = label or pattern
    case = out / f"{label}-seed{seed}"
    case.mkdir(parents=True, exist_ok=True)
    x = emb[planted.rows]
    np.save(case / "emb.npy", x)
    pd.DataFrame({"image": paths[planted.rows], "identity": planted.given}).to_csv(case / "index.csv", index=False)
    t0 = time.perf_counter()
    if clean.main(["--embeddings", str(case / "emb.npy"), "--index", str(case / "index.csv"), "--workdir",
                   str(case / "work"), "--no-progress"]) != 0:
        sys.exit(f"the clean failed on {pattern}, seed {seed}")
    seconds = time.perf_counter() - t0
    flags = pd.read_csv(case / "work" / "flags.csv", dtype={"image": str})
    photo = flags[flags.flag.isin(["outlier", "minority"])].drop_duplicates("image")
    where = {p: i for i, p in enumerate(paths[planted.rows])}
    flagged = np.zeros(len(x), bool)
    suggested = np.full(len(x), None, dtype=object)
    rows = photo.image.map(where).to_numpy()
    flagged[rows] = True
    suggested[rows] = photo.suggested_identity.where(photo.suggested_identity.notna(), None).to_numpy()
    s = score_flags(planted, flagged, suggested)
    b = oracle_baseline(x, planted)
    scored = ~np.isin(paths[planted.rows], list(known))  # the source's own errors left out, for both
    sub = Planted(planted.pattern, planted.rows[scored], planted.given[scored], planted.person[scored],
                  planted.in_dataset[scored])
    s_known = score_flags(sub, flagged[scored], suggested[scored])
    b_known = oracle_baseline(x[scored], sub)
    # calibration: P(wrong identity) should average to the share of wrong photos
    p_wrong = pd.read_parquet(WorkFolder(case / "work").nodes, columns=["p_wrong"]).p_wrong.mean()
    return {"pattern": label, "seed": seed, "project": s, "baseline": b, "project_clean_source": s_known,
            "baseline_clean_source": b_known, "left_out": int((~scored).sum()), "seconds": seconds,
            "mean_p_wrong": float(p_wrong), "share_wrong": float(planted.wrong.mean())}


def files_demo(src: Path, out: Path, model: str, seed: int, cache: Path) -> dict:
    """The files-level demo's figures (split, merge, duplicates, fake_mismatch) on LFW; `cache` is the embedding
    cache of SRC's own clean (the noisy copy holds the same files, so only the mirrored deepfakes are embedded)."""
    work = out / f"files-seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "cache").exists():
        (work / "cache").symlink_to(cache.resolve(), target_is_directory=True)
    argv = [str(src), "--plant-noise", "--demo-identities", "100000", "--workdir", str(work), "--seed", str(seed),
            "--noisy-dir", str(out / f"files-noisy-seed{seed}"), "--model", model, "--no-progress"]
    if clean.main(argv) != 0:
        sys.exit("the files-level demo failed")
    return json.loads((work / "report.json").read_text())["planted_noise"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="folder for the embedding passes, kept between runs")
    p.add_argument("--lfw", default=str(SHARED / "lfw"), help="clean identity folders (unaligned photos)")
    p.add_argument("--aligned-src", default=str(SHARED / "glint24"), help="clean identity folders of aligned crops")
    p.add_argument("--model", default="dlib")
    p.add_argument("--patterns", nargs="+", default=[*PATTERNS, "aligned"], choices=[*PATTERNS, "aligned"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--files", action="store_true", help="also run the files-level demo (split/merge/dup/fakes)")
    p.add_argument("--json", help="write every figure to this file")
    args = p.parse_args()
    cache = Path(args.cache).expanduser()
    out = Path(tempfile.mkdtemp(prefix="runs-", dir=cache.mkdir(parents=True, exist_ok=True) or cache))
    tag = args.model.replace(":", "_").replace("/", "_")
    lfw = glint = None
    if set(args.patterns) - {"aligned"} or args.files:
        lfw = embedded(Path(args.lfw), cache / f"lfw-{tag}", args.model, False)
    if "aligned" in args.patterns:
        glint = embedded(Path(args.aligned_src), cache / f"aligned-{tag}", args.model, True)
    known_lfw = source_flags(*lfw) if lfw else set()
    known_glint = source_flags(*glint) if glint else set()
    results = []
    for pattern in args.patterns:
        for seed in args.seeds:
            if pattern == "aligned":
                results.append(run_pattern(*glint, "random10", seed, out, 5, known_glint, label="aligned"))
            else:
                results.append(run_pattern(*lfw, pattern, seed, out, 10, known_lfw))
    files = [files_demo(Path(args.lfw), out, args.model, s, cache / f"lfw-{tag}" / "cache") for s in args.seeds
             if args.files]
    print("\nF1 per pattern, project / oracle baseline (threshold tuned on this run's truth); first on every photo, then"
          " with the photos the clean flags in the unplanted source left out (its own errors), for both")
    print("pattern             seed  wrong | project P     R    F1  | baseline P   R    F1  | F1 w/o source errors "
          "(n left out) | suggested right  not-in-dataset | share wrong / mean P(wrong) | seconds")
    for r in results:
        s, b, sk, bk = r["project"], r["baseline"], r["project_clean_source"], r["baseline_clean_source"]
        sr = "-" if s["suggested_right"] is None else f"{s['suggested_right']:.3f}"
        nd = "-" if s["not_in_dataset"] is None else f"{s['not_in_dataset']:.3f}"
        print(f"{r['pattern']:<18}  {r['seed']:>4}  {s['wrong']:>5} | {s['precision']:.3f} {s['recall']:.3f} "
              f"{s['f1']:.3f} | {b['precision']:.3f} {b['recall']:.3f} {b['f1']:.3f} | {sk['f1']:.3f} / {bk['f1']:.3f} "
              f"({r['left_out']:>2})      | {sr:>15}  {nd:>14} | {r['share_wrong']:.3f} / {r['mean_p_wrong']:.3f}"
              f"{'':>13} | {r['seconds']:.1f}")
    for s in files:
        print(f"files-level demo: split caught {s['split_caught']}, merge caught {s['merge_caught']} "
              f"({s['split_flags']} split, {s['merge_flags']} merge flags), duplicates recall {s['duplicate_recall']} "
              f"({s['duplicate_flags']} flagged), fake_mismatch precision {s['fake_mismatch_precision']} recall "
              f"{s['fake_mismatch_recall']}, outlier+minority precision {s['precision']} recall {s['recall_moved']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"patterns": results, "files": files}, indent=1, default=float))
    print(f"(runs in {out})")


if __name__ == "__main__":
    main()
