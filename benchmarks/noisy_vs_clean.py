"""Does fine-tuning make a better verifier, and do cleaned labels beat noisy ones? Measured on held-out identities.

The experiment this product exists for (issue 16, part 3):
1. From a folder of identity folders (default ../shared/faces/lfw), take `--identities` people for training and
   `--val-identities` other people, held out (identity-disjoint); `curation.fakes` makes synthetic deepfakes (swaps and
   morphs) of everyone, so both parts have "person vs their own deepfake" pairs.
2. Label noise in the training part only (`plant_label_noise`): ~`--noise` of the real photos get a wrong identity,
   as a crawled dataset has them: photos filed under the most similar other person (the nearest identity centroid
   of the pretrained model: lookalikes), small clusters of one wrong person inside an identity, and random moves.
3. The noisy training set is cleaned with no human: `curation.clean` (flags in the label store), then the labels
   `labels.export --unreviewed apply` would write (`effective_labels(store, "apply")`).
4. The pretrained ONNX embedder is fine-tuned, same seed, steps and recipe, on (a) the noisy labels, (b) the cleaned
   labels, (c) the true labels; (d) is the model as given (step 0). Three training seeds each.
5. For each condition, on the held-out people: EER over all pairs (same person / different person / own deepfake),
   real-only EER (same vs different person), at the all-pairs EER threshold the same-person FRR, different-person FAR
   and deepfake FAR (swaps, morphs), and TAR at FAR 1e-3 (all pairs, and real pairs only); mean and spread over seeds.
   Every figure comes from `curation.scoring.metrics` (bob EER convention).

Fine-tuning is the product's own: `curation.training.loop.train` (what `python -m curation.train_on_clean --config
finetune-pretrained` runs) with the `finetune-pretrained` preset (curation.training.presets: MobileFaceNet's last 9
layers, lr 1e-3, distillation to the initial embeddings of the real photos, ...; README "Does fine-tuning help?" for
the configurations behind it), on an aligned dataset folder of each condition's labels, validating on the held-out
people; the held-out figures are those of the run's last weights. Any option of the preset can be changed by its flag.

Every stage is cached under OUT (split, fakes, crops, trunk features, noise, cleaning, each fine-tuning run's result),
so a re-run only does what is missing and a killed run resumes at the next unfinished stage; runs of several seeds may
go in parallel processes on the same OUT once the shared stages exist (`--seeds 0`, `--seeds 1`, ..., then all seeds
once more to print the table).

Held-out pairs: every same-person pair of real photos, as many different-person pairs (seeded), and every real photo
against each of its identity's deepfakes.

    # the default size (80 train / 40 held-out LFW people, 3 seeds): 10 min of fakes, alignment and cleaning, then
    # the runs, with one thread per process on a busy 2-core CPU (OMP_NUM_THREADS=1: more threads only contend)
    OMP_NUM_THREADS=1 python benchmarks/noisy_vs_clean.py --out /tmp/nvc
    # one seed, true labels only
    OMP_NUM_THREADS=1 python benchmarks/noisy_vs_clean.py --out /tmp/nvc --seeds 0 --conditions true
    # larger, every layer, on a GPU
    python benchmarks/noisy_vs_clean.py --out nvc --identities 300 --val-identities 100 --max-photos 30 \\
        --trainable all --lr 1e-5 --distill 50 --max-steps 2000 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.clean import clean_dataset, format_summary  # noqa: E402
from curation.flagging.noise import list_identities  # noqa: E402
from curation.scoring.metrics import equal_error_rate, tar_at_far, verification_report  # noqa: E402
from curation.training.config import load_config, resolve_config  # noqa: E402
from curation.training.fakes import make_fakes  # noqa: E402
from curation.training.loop import train as train_model  # noqa: E402
from curation.training.trainable import parse_trainable  # noqa: E402
from embeddings.options import EmbedOptions  # noqa: E402
from embeddings.align import align, center_crop  # noqa: E402
from embeddings.detectors import make_detector  # noqa: E402
from embeddings.device import pick_device  # noqa: E402
from embeddings.checkpoints import read_checkpoint  # noqa: E402
from embeddings.onnx_backbone import load_onnx_backbone  # noqa: E402
from embeddings.onnx_torch import load_onnx_module  # noqa: E402
from embeddings.preprocess import to_input  # noqa: E402
from labels.export import effective_labels  # noqa: E402
from labels.imagefile import read_rgb  # noqa: E402
from labels.store import LabelStore  # noqa: E402

CONDITIONS = ("noisy", "cleaned", "true")
HELDOUT_TYPES = ("same", "different", "swap", "morph")
FIGURES = ("eer", "real_eer", "frr_same", "far_different", "far_deepfake", "far_swap", "far_morph", "tar_1e-3",
           "real_tar_1e-3")


PRESET = "finetune-pretrained"  # curation.training.presets: the recipe every run trains with (flags change options)


# ---- data stages -----------------------------------------------------------------------------------------------------
def _link_tree(src: Path, dst: Path, people: dict[str, list[str]]) -> None:
    for name, files in people.items():
        (dst / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (dst / name / f).exists():
                try:
                    os.link(src / name / f, dst / name / f)
                except OSError:
                    shutil.copy2(src / name / f, dst / name / f)


def aligned_crops(root: Path, cache: Path, detector: str = "dlib") -> dict:
    """Every photo of a `curation.fakes` output aligned to the ArcFace template (central face; centre crop when none is
    found), cached in `cache` (.npz): keys "<identity>/<file>", identity, is_fake, kind (real/swap/morph), crops."""
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    meta = json.loads((root / "meta.json").read_text())
    det = make_detector(detector)
    keys = sorted(meta)
    crops = []
    for k in tqdm(keys, desc=f"aligning {root.name}", unit="photo"):
        rgb = read_rgb(root / "images" / k)
        crop = align(rgb, det).crop
        crops.append(center_crop(rgb) if crop is None else crop)
    kind = [("swap" if "/fake_swap_" in k else "morph") if meta[k] else "real" for k in keys]
    data = {"key": np.array(keys), "identity": np.array([k.split("/")[0] for k in keys]),
            "is_fake": np.array([bool(meta[k]) for k in keys]), "kind": np.array(kind), "crops": np.stack(crops)}
    np.savez(cache, **data)
    return data


def plant_label_noise(identity: np.ndarray, emb: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Wrong identities for ~`fraction` of the photos, the kinds a crawled dataset has.

    Inputs: each real photo's true identity, its (unit) embedding from the pretrained model, the share to mislabel,
    a seed. Output: (noisy identity per photo, noise kind per photo: "" for a correct label, "lookalike" for a photo
    filed under the identity whose centroid is nearest to its own identity's, "cluster" for one of 3 photos of one
    person put together into another identity, "random" for a move to a random identity). A third of the budget
    each; every identity keeps at least 60% of its own photos, so the folder's majority is still its person.

    Example:
        >>> noisy, kind = plant_label_noise(identity, emb, 0.2, seed=0)
        >>> (noisy != identity).mean()             # about 0.2
    """
    rng = np.random.default_rng(seed)
    names = np.unique(identity)
    cent = np.stack([emb[identity == n].mean(0) for n in names])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    sim = cent @ cent.T
    np.fill_diagonal(sim, -np.inf)
    nearest = {n: names[j] for n, j in zip(names, sim.argmax(1))}
    noisy, kind = identity.copy(), np.full(len(identity), "", dtype=object)
    budget = {n: int(0.4 * (identity == n).sum()) for n in names}
    n_total = int(round(fraction * len(identity)))
    n_cluster = n_total // 3 // 3 * 3
    n_look = (n_total - n_cluster) // 2
    n_random = n_total - n_cluster - n_look

    def movable(person: str | None = None) -> np.ndarray:
        ok = (kind == "") & np.array([budget[p] > 0 for p in identity])
        return np.flatnonzero(ok if person is None else ok & (identity == person))

    for _ in range(n_cluster // 3):  # 3 photos of one person into one other identity
        for person in rng.permutation(names):
            cand = movable(person)
            if len(cand) >= 3 and budget[person] >= 3:
                break
        else:
            break
        target = rng.choice(names[names != person])
        pick = rng.choice(cand, 3, replace=False)
        noisy[pick], kind[pick] = target, "cluster"
        budget[person] -= 3
    for what, count in (("lookalike", n_look), ("random", n_random + n_cluster - (kind == "cluster").sum())):
        for i in rng.permutation(movable())[:count]:
            if budget[identity[i]] <= 0:
                continue
            noisy[i] = nearest[identity[i]] if what == "lookalike" else rng.choice(names[names != identity[i]])
            kind[i] = what
            budget[identity[i]] -= 1
    return noisy, kind.astype(str)


def noisy_dataset(train: dict, noisy_identity: np.ndarray, out: Path, fakes_root: Path) -> None:
    """The noisy training set as a user would have it: real photos in their (noisy) identity folders, deepfakes in
    their identity's folder, `meta.json` marking the deepfakes (the challenge layout `curation.clean` reads)."""
    if (out / "meta.json").exists():
        return
    meta = {}
    real = ~train["is_fake"]
    for key, ident, fake in zip(train["key"], np.where(real, noisy_identity, train["identity"]), train["is_fake"]):
        dest = f"{ident}/{key.split('/')[1]}"
        (out / "images" / ident).mkdir(parents=True, exist_ok=True)
        if not (out / "images" / dest).exists():
            os.link(fakes_root / "images" / key, out / "images" / dest)
        meta[dest] = int(fake)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def cleaned_labels(work: Path, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(identity, kept) per photo after `curation.clean` with every open flag applied, no human: exactly the labels
    `labels.export --unreviewed apply` writes. `keys` are the photos' "<folder>/<file>" in the noisy dataset (file
    names alone repeat: every identity has a fake_swap_00.jpg)."""
    with LabelStore.open(work) as store:
        labels = effective_labels(store, "apply")
    by_key = {"/".join(Path(p).parts[-2:]): (i, not r)
              for p, i, r in zip(labels["path"], labels["identity"], labels["removed"])}
    got = [by_key.get(k, ("", False)) for k in keys]
    return np.array([g[0] for g in got]), np.array([g[1] for g in got])


def heldout_pairs(data: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, type code into HELDOUT_TYPES): all same-person real pairs, as many different-person ones, and every
    real photo against each deepfake of its identity."""
    rng = np.random.default_rng(seed)
    ident, fake, kind = data["identity"], data["is_fake"], data["kind"]
    real = np.flatnonzero(~fake)
    a, b, t = [], [], []
    for name in np.unique(ident[real]):
        r = real[ident[real] == name]
        iu, ju = np.triu_indices(len(r), 1)
        a.append(r[iu]), b.append(r[ju]), t.append(np.zeros(len(iu), int))
        for f in np.flatnonzero(fake & (ident == name)):
            a.append(r), b.append(np.full(len(r), f)), t.append(np.full(len(r), 2 if kind[f] == "swap" else 3))
    n_diff = sum(len(x) for x, y in zip(t, t) if y[0] == 0 and len(y))
    seen: set[tuple[int, int]] = set()
    while len(seen) < n_diff:
        i, j = rng.choice(real, 2, replace=False)
        if ident[i] != ident[j]:
            seen.add((min(i, j), max(i, j)))
    diff = np.array(sorted(seen))
    return (np.concatenate(a + [diff[:, 0]]), np.concatenate(b + [diff[:, 1]]),
            np.concatenate(t + [np.ones(len(diff), int)]))


def heldout_figures(emb: torch.Tensor, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    """The benchmark's figures from held-out unit embeddings, through curation.scoring.metrics."""
    a, b, t = pairs
    s = (emb[a] * emb[b]).sum(1).numpy()
    y = (t == 0).astype(np.int8)
    rep = verification_report(s, y, t, type_names=HELDOUT_TYPES, curve=False)
    real = t <= 1
    fake = t >= 2
    pt = rep.per_type
    n_fake = pt["swap"].n + pt["morph"].n
    return {
        "eer": rep.eer, "threshold": rep.eer_threshold,
        "real_eer": equal_error_rate(s[real], y[real]).eer,
        "frr_same": pt["same"].rate, "far_different": pt["different"].rate,
        "far_deepfake": (pt["swap"].false_accepts + pt["morph"].false_accepts) / max(n_fake, 1),
        "far_swap": pt["swap"].rate, "far_morph": pt["morph"].rate,
        "tar_1e-3": rep.tar_at_far["0.001"].tar,
        "real_tar_1e-3": tar_at_far(s[real], y[real], (1e-3,))["0.001"].tar,
        "mean_cos": {name: float(s[t == k].mean()) for k, name in enumerate(HELDOUT_TYPES)},
        "pairs": {name: int((t == k).sum()) for k, name in enumerate(HELDOUT_TYPES)},
        "deepfake_pairs": int(fake.sum()),
    }


# ---- fine-tuning -----------------------------------------------------------------------------------------------------
def frozen_cut(model: torch.nn.Module, trainable: str) -> str | None:
    """Where the frozen trunk ends for `trainable` ("all": None; "last:K": the latest cut point of the graph with at
    least K layers after it, so the tail that trains may be a few layers longer than K, never shorter)."""
    try:
        k = parse_trainable(trainable)
    except ValueError as e:
        sys.exit(str(e))
    if k is None:
        return None
    for cut in reversed(model.cut_points()):
        if model.layers_after(cut) >= k:
            return cut
    return None


@torch.no_grad()
def trunk_features(model: torch.nn.Module, crops: np.ndarray, cut: str | None, device: torch.device, flip: bool,
                   batch: int = 64) -> torch.Tensor:
    """The frozen part's output for every crop (float16, CPU): computed once, every step then runs only the tail.
    With no cut this is the model input itself (exact in float16: (x - 127.5) / 128 has 1/256 steps)."""
    model.eval()
    out = []
    for s in tqdm(range(0, len(crops), batch), desc="frozen trunk" + (" (mirrored)" if flip else ""), leave=False):
        x = to_input(crops[s : s + batch], "arcface_rgb").to(device)
        x = x.flip(-1) if flip else x
        out.append((x if cut is None else model.run_part(x, stop=cut)).half().cpu())
    return torch.cat(out)


def tail_embed(model: torch.nn.Module, feats: torch.Tensor, cut: str | None, device: torch.device,
               batch: int = 256) -> torch.Tensor:
    """Unit embeddings from trunk features (eval mode, no gradient), float32 on the CPU."""
    model.eval()
    with torch.no_grad():
        return torch.cat([F.normalize(model.run_part(feats[s : s + batch].to(device).float(), start=cut), dim=1).cpu()
                          for s in range(0, len(feats), batch)])


def aligned_dataset(data: dict, identity: np.ndarray, keep: np.ndarray, out: Path) -> Path:
    """The photos `keep` as an aligned dataset folder in the challenge layout (OUT/images/<identity>/<file>.png, the
    112x112 crops of `data`, lossless; meta.json marks the deepfakes): what `train_on_clean --aligned` trains on."""
    if (out / "meta.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {}
    for row in np.flatnonzero(keep):
        dest = f"{identity[row]}/{Path(data['key'][row]).stem}.png"
        (tmp / "images" / str(identity[row])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(data["crops"][row]).save(tmp / "images" / dest)
        meta[dest] = int(data["is_fake"][row])
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    tmp.rename(out)
    return out


def finetuned_embeddings(run: Path, crops: np.ndarray, device: torch.device) -> torch.Tensor:
    """Unit embeddings of `crops` by the run's last weights (RUN/init.onnx + last.pt), float32 on the CPU."""
    model = load_onnx_backbone(run / "init.onnx")
    model.load_state_dict(read_checkpoint(run / "last.pt").state_dict, strict=True)
    model.to(device).eval()
    with torch.no_grad():
        return torch.cat([model(to_input(torch.from_numpy(crops[s : s + 256]).to(device), "adaface"))[0].cpu()
                          for s in range(0, len(crops), 256)])


# ---- the run ---------------------------------------------------------------------------------------------------------
def _summary(runs: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, float]]]:
    out = {}
    for cond, rs in runs.items():
        out[cond] = {}
        for f in FIGURES:
            v = np.array([np.nan if r[f] is None else r[f] for r in rs], float)
            out[cond][f] = {"mean": float(np.nanmean(v)), "spread": float(np.nanmax(v) - np.nanmin(v)),
                            "values": v.tolist()}
    return out


def format_table(summary: dict, n_seeds: int) -> str:
    """The readable table: one row per condition, mean +- half the spread (max - min over seeds) per figure."""
    head = ("labels", "EER all", "EER real", "FRR same", "FAR diff", "FAR fake", "FAR swap", "FAR morph",
            "TAR@1e-3", "real TAR@1e-3")
    lines = [" ".join(f"{h:>14s}" if i else f"{h:9s}" for i, h in enumerate(head))]
    for cond, figs in summary.items():
        cells = []
        for f in FIGURES:
            m, sp = figs[f]["mean"], figs[f]["spread"]
            cells.append(f"{m * 100:6.2f}" + (f" +-{sp * 50:5.2f}" if cond != "step 0" else " " * 7))
        lines.append(f"{cond:9s} " + " ".join(f"{c:>14s}" for c in cells))
    lines.append(f"(percent, held-out identities; +- is half the max-min spread over {n_seeds} seeds; FAR and FRR "
                 "at the all-pairs EER threshold)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "faces" / "lfw",
                    help="folder of identity folders of real photos (default ../shared/faces/lfw)")
    ap.add_argument("--out", required=True, type=Path, help="where everything goes (reused by a re-run)")
    ap.add_argument("--model", type=Path, default=None,
                    help="ONNX embedder to fine-tune and to clean with (default ../shared/models/mobilefacenet.onnx)")
    ap.add_argument("--identities", type=int, default=80, help="training people (default 80)")
    ap.add_argument("--val-identities", type=int, default=40, help="held-out people (default 40)")
    ap.add_argument("--min-photos", type=int, default=10)
    ap.add_argument("--max-photos", type=int, default=15, help="photos per person at most (default 15)")
    ap.add_argument("--fakes-per-identity", type=int, default=4, help="swaps and morphs, alternating (default 4)")
    ap.add_argument("--noise", type=float, default=0.2, help="share of training photos with a wrong label (default 0.2)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the split, the fakes and the noise")
    ap.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS),
                    help="which labels to fine-tune on (default all three)")
    for name, value in load_config(PRESET).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            ap.add_argument(flag, type=type(value), default=value, help=f"{PRESET} option (default {value})")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2, help="alignment workers of the cleaning pass")
    args = ap.parse_args()
    recipe = {name: getattr(args, name) for name in load_config(PRESET)}
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_path = (args.model or Path(__file__).resolve().parents[1] / ".." / "shared" / "models" / "mobilefacenet.onnx")
    model_path = model_path.resolve()
    device = pick_device(args.device)
    t_start = time.time()

    # split, fakes, crops
    people = list_identities(args.source, args.min_photos, None, args.max_photos)
    names = sorted(people)
    need = args.identities + args.val_identities
    if len(names) < need:
        sys.exit(f"{args.source}: {len(names)} people with {args.min_photos}+ photos, {need} needed")
    order = np.random.default_rng(args.data_seed).permutation(len(names))
    parts = {"val": [names[i] for i in order[: args.val_identities]],
             "train": [names[i] for i in order[args.val_identities : need]]}
    data = {}
    for part, who in parts.items():
        _link_tree(args.source, out / f"src_{part}", {n: people[n] for n in who})
        fakes = out / f"fakes_{part}"
        if not (fakes / "meta.json").exists():
            print(make_fakes(out / f"src_{part}", fakes, per_identity=args.fakes_per_identity,
                             seed=args.data_seed).describe())
        data[part] = aligned_crops(fakes, out / f"crops_{part}.npz")
    train, val = data["train"], data["val"]
    pairs = heldout_pairs(val, args.data_seed)

    # the frozen trunk's output for every photo, step 0, the teacher embeddings
    base = load_onnx_module(model_path).to(device)
    cut = frozen_cut(base, recipe["trainable"])
    feats_file = out / f"trunk_{recipe['trainable'].replace(':', '')}.pt"
    if not feats_file.exists():
        torch.save({"cut": cut, "train": trunk_features(base, train["crops"], cut, device, False),
                    "train_flip": trunk_features(base, train["crops"], cut, device, True),
                    "val": trunk_features(base, val["crops"], cut, device, False)}, feats_file)
    feats = torch.load(feats_file, weights_only=True)
    teacher = (tail_embed(base, feats["train"], cut, device), tail_embed(base, feats["train_flip"], cut, device))
    step0_file = out / "step0.json"
    if not step0_file.exists():
        step0_file.write_text(json.dumps(heldout_figures(tail_embed(base, feats["val"], cut, device), pairs)))
    step0 = json.loads(step0_file.read_text())
    real = ~train["is_fake"]
    labels_file = out / "labels.csv"
    if not labels_file.exists():
        noisy_real, kind = plant_label_noise(train["identity"][real], teacher[0][real].numpy(), args.noise,
                                             args.data_seed)
        noisy = train["identity"].copy()
        noisy[real] = noisy_real
        noise_kind = np.full(len(noisy), "", dtype=object)
        noise_kind[real] = kind
        noisy_dataset(train, noisy, out / "noisy", out / "fakes_train")
        outcome = clean_dataset(out / "noisy", out / "work", model=f"onnx:{model_path}", device=str(device),
                                options=EmbedOptions(workers=args.workers))
        print(format_summary(outcome))
        pd.DataFrame({"key": train["key"], "true": train["identity"], "noisy": noisy,
                      "noise": noise_kind}).to_csv(labels_file, index=False)
    labels = pd.read_csv(labels_file, keep_default_na=False)
    noisy_keys = [f"{ident}/{key.split('/')[1]}" for ident, key in zip(labels["noisy"], labels["key"])]
    labels["cleaned"], labels["cleaned_kept"] = cleaned_labels(out / "work", np.array(noisy_keys))
    conditions = {
        "noisy": (labels["noisy"].to_numpy(), np.ones(len(labels), bool)),
        "cleaned": (labels["cleaned"].to_numpy(), labels["cleaned_kept"].to_numpy(bool)),
        "true": (labels["true"].to_numpy(), np.ones(len(labels), bool)),
    }
    label_quality = {}
    for cond, (ident, keep) in conditions.items():
        r = keep & real
        label_quality[cond] = {"real_photos": int(r.sum()), "removed": int((~keep & real).sum()),
                               "deepfakes_removed": int((~keep & ~real).sum()),
                               "wrong": int((ident[r] != labels["true"].to_numpy()[r]).sum())}
        label_quality[cond]["noise_rate"] = label_quality[cond]["wrong"] / max(label_quality[cond]["real_photos"], 1)

    # the fine-tuning runs, each cached
    runs: dict[str, list[dict]] = {c: [] for c in args.conditions}
    val_folder = aligned_dataset(val, val["identity"], np.ones(len(val["key"]), bool), out / "aligned_val")
    for seed in args.seeds:
        for cond in args.conditions:
            f = out / "runs" / f"{cond}_seed{seed}.json"
            if not f.exists():
                print(f"fine-tuning on the {cond} labels, seed {seed}")
                t0 = time.time()
                run = out / "runs" / f"{cond}_seed{seed}"
                run.parent.mkdir(exist_ok=True)
                cfg = resolve_config(file_values=recipe, cli_values={
                    "data": str(aligned_dataset(train, *conditions[cond], out / f"aligned_{cond}")),
                    "val_data": str(val_folder), "aligned": True, "init": f"onnx:{model_path}", "out": str(run),
                    "seed": seed, "device": str(device), "workers": 0})
                train_model(cfg, resume=(run / "manifest.json").exists(), say=lambda line: None)
                result = {"condition": cond, "seed": seed, "recipe": recipe, "seconds": time.time() - t0,
                          **heldout_figures(finetuned_embeddings(run, val["crops"], device), pairs)}
                f.write_text(json.dumps(result, indent=1))
            result = json.loads(f.read_text())
            if result["recipe"] != recipe:
                sys.exit(f"{f}: made with another recipe ({result['recipe']}); use another --out or delete it")
            runs[cond].append(result)
    summary = {"step 0": _summary({"s": [step0]})["s"], **_summary(runs)}
    report = {"recipe": recipe, "seeds": args.seeds, "identities": args.identities,
              "val_identities": args.val_identities, "labels": label_quality, "pairs": step0["pairs"],
              "summary": summary, "runs": runs, "step0": step0, "seconds": time.time() - t_start}
    (out / "noisy_vs_clean.json").write_text(json.dumps(report, indent=1))
    print("\ntraining labels (real photos):")
    for cond, q in label_quality.items():
        print(f"  {cond:8s} {q['real_photos']:5d} photos, {q['wrong']:4d} wrong ({q['noise_rate']:.1%}), "
              f"{q['removed']} removed (and {q['deepfakes_removed']} deepfakes)")
    print(f"\nheld-out: {args.val_identities} identities, pairs {step0['pairs']}; recipe {PRESET} {recipe}")
    print(format_table(summary, len(args.seeds)))
    print(f"wrote {out / 'noisy_vs_clean.json'} ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
