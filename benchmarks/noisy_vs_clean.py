"""The experiment this product exists for: does fine-tuning on cleaned labels beat fine-tuning on the noisy ones?

1. From real photos (a folder of identity folders, e.g. ../shared/faces/lfw), hold out `--val-identities` people as a
   clean validation set and take `--identities` others for training.
2. Plant label noise in the training people (`curation.flagging.noise.plant`: ~10% of photos moved to wrong identities, two people
   merged under one name, one person split in two, duplicates, mismatched deepfake stand-ins), then add synthetic deepfakes
   of every identity (`curation.fakes`) to both the noisy training set and the validation set.
3. Clean the noisy set (`curation.clean`: dlib embeddings by default, flags in the label store).
4. Fine-tune the same backbone from the same initial weights twice with `curation.train_on_clean`, identical options and
   seed: once on the labels as found (`--unreviewed keep`: the noisy labels) and once on the labels after cleaning with
   every automatic suggestion applied (`--unreviewed apply`, exactly what `labels.export --unreviewed apply` writes),
   both validated on the same held-out people (`--val-data`).
5. Print the label noise each run trained on (measured against the planted truth) and both runs' validation EERs.

Every stage reuses what an earlier invocation made under OUT, so a re-run with more `--steps` continues the two runs.

    # what the note reports: a CPU-sized run (IR-18 from random weights: nothing pretrained is available here)
    python benchmarks/noisy_vs_clean.py --source ../shared/faces/lfw --out /tmp/nvc --identities 30 --steps 40
    # full size on a GPU, from a pretrained checkpoint
    python benchmarks/noisy_vs_clean.py --source lfw --out nvc --identities 400 --val-identities 20 --arch ir_101 \\
        --init adaface_ir101_webface12m.ckpt --model ir:ir_101:adaface_ir101_webface12m.ckpt --steps 3000 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.flagging import noise  # noqa: E402
from curation.clean import clean_dataset, format_summary  # noqa: E402
from curation.training.fakes import make_fakes  # noqa: E402
from embeddings.options import EmbedOptions  # noqa: E402
from curation.training.config import resolve_config  # noqa: E402
from curation.training.loop import train  # noqa: E402
from curation.training.run_folder import RunFolder  # noqa: E402
from labels.export import effective_labels  # noqa: E402
from labels.ingest import ingest  # noqa: E402
from labels.store import LabelStore  # noqa: E402

POLICIES = {"noisy": "keep", "cleaned": "apply"}


def _link_people(src: Path, dst: Path, people: dict[str, list[str]]) -> None:
    for name, files in people.items():
        (dst / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (dst / name / f).exists():
                try:
                    os.link(src / name / f, dst / name / f)
                except OSError:
                    shutil.copy2(src / name / f, dst / name / f)


def label_noise(work: Path, policy: str, truth: dict) -> dict:
    """How wrong the training labels are under `policy`, against the planted truth (real photos only)."""
    with LabelStore.open(work) as store:
        labels = effective_labels(store, policy)
    kept = labels[~labels["removed"] & ~labels["is_fake"]]
    photos, folder_person = truth["photos"], truth["folder_person"]
    wrong = known = 0
    for path, identity in zip(kept["path"], kept["identity"]):
        t = photos.get("/".join(path.split("/")[-2:]))
        if t is None:
            continue
        known += 1
        wrong += t["person"] != folder_person.get(identity, identity)
    return {
        "real_photos": int(len(kept)),
        "wrong_identity": int(wrong),
        "noise_rate": round(wrong / max(known, 1), 4),
        "identities": int(kept["identity"].nunique()),
        "deepfakes": int((labels["is_fake"] & ~labels["removed"]).sum()),
        "removed": int(labels["removed"].sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, type=Path, help="folder of identity folders of real photos")
    ap.add_argument("--out", required=True, type=Path, help="where everything goes (reused by a re-run)")
    ap.add_argument("--identities", type=int, default=30, help="training people (default 30)")
    ap.add_argument("--val-identities", type=int, default=10, help="held-out validation people (default 10)")
    ap.add_argument("--min-photos", type=int, default=10)
    ap.add_argument("--max-photos", type=int, default=15, help="photos per person at most (default 15)")
    ap.add_argument("--noise", type=float, default=0.10, help="share of photos moved to a wrong identity")
    ap.add_argument("--fakes-per-identity", type=int, default=2)
    ap.add_argument("--model", default="dlib", help="embedder for cleaning (curation.clean --model)")
    ap.add_argument("--detector", default="dlib")
    ap.add_argument("--arch", default="ir_18")
    ap.add_argument("--init", default="random", help="checkpoint to fine-tune, or random (default; warns)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--val-every", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-3 from random weights, else the recipe's 5e-6")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    people = noise.list_identities(args.source, args.min_photos, None, args.max_photos)
    names = sorted(people)
    need = args.identities + args.val_identities
    if len(names) < need:
        sys.exit(f"{args.source}: {len(names)} people with {args.min_photos}+ photos, {need} needed")
    order = np.random.default_rng(args.seed).permutation(len(names))
    val_people = {names[i]: people[names[i]] for i in order[: args.val_identities]}
    train_people = {names[i]: people[names[i]] for i in order[args.val_identities : need]}
    _link_people(args.source, out / "src_train", train_people)
    _link_people(args.source, out / "src_val", val_people)

    noisy = out / "noisy"
    if not (noisy / noise.TRUTH_NAME).exists():
        shutil.rmtree(noisy, ignore_errors=True)
        noise.plant(out / "src_train", noisy, min_photos=args.min_photos, fraction=args.noise, seed=args.seed)
    truth = json.loads((noisy / noise.TRUTH_NAME).read_text())
    for data, dest in ((noisy, out / "noisy_fakes"), (out / "src_val", out / "val_fakes")):
        print(make_fakes(data, dest, per_identity=args.fakes_per_identity, seed=args.seed).describe())
    val_work = out / "val_work"  # ingested once, so both runs read the same crops of the same validation set
    print(ingest(out / "val_fakes", val_work).report())
    work = out / "work"
    outcome = clean_dataset(out / "noisy_fakes", work, model=args.model, device=args.device,
                            options=EmbedOptions(detector=args.detector, workers=args.workers))
    print(format_summary(outcome))

    results = {}
    for name, policy in POLICIES.items():
        lr = args.lr if args.lr is not None else (1e-3 if args.init == "random" else 5e-6)
        cfg = resolve_config(cli_values={
            "data": str(work), "val_data": str(val_work), "unreviewed": policy, "out": str(out / "runs" / name),
            "init": args.init, "arch": args.arch, "max_steps": args.steps, "val_every": args.val_every,
            "batch_size": args.batch_size, "lr": lr, "device": args.device, "workers": args.workers,
            "seed": args.seed, "detector": args.detector, "epochs": 1000,
        })
        print(f"\n=== fine-tuning on the {name} labels (--unreviewed {policy}) ===")
        result = train(cfg, resume=RunFolder(cfg.out).has_run())
        history = result.history
        results[name] = {
            "labels": label_noise(work, policy, truth),
            "eer_initial": history[0]["eer"],
            "eer_final": history[-1]["eer"],
            "eer_best": min(r["eer"] for r in history),
            "per_type_final": history[-1]["per_type"],
            "steps": history[-1]["step"],
            "val_pairs": history[-1]["n_pairs"],
        }
    (out / "noisy_vs_clean.json").write_text(json.dumps(results, indent=2))
    print(f"\nsame {args.arch} init ({args.init}), same seed and options; validation on {args.val_identities} held-out"
          " people with synthetic deepfakes")
    print(f"{'labels':8s} {'real':>6s} {'wrong':>6s} {'noise':>7s} {'removed':>8s} {'EER@0':>7s} {'EER end':>8s}"
          f" {'best':>7s}  errors at the end (same / different / own_fake)")
    for name, r in results.items():
        lab, pt = r["labels"], r["per_type_final"]
        print(f"{name:8s} {lab['real_photos']:6d} {lab['wrong_identity']:6d} {lab['noise_rate']:7.2%} {lab['removed']:8d}"
              f" {r['eer_initial']:7.4f} {r['eer_final']:8.4f} {r['eer_best']:7.4f}  "
              + " / ".join(f"{pt.get(k, float('nan')):.3f}" for k in ("same", "different", "own_fake")))
    print(f"wrote {out / 'noisy_vs_clean.json'}")


if __name__ == "__main__":
    main()
