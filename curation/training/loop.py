"""The fine-tuning loop behind `python -m curation.train_on_clean WORK --init CKPT --out RUN`: `train(cfg)`.

This is what the cleaning is for: the labels the store holds after review (exactly what `labels.export` would write) or
an exported dataset folder become verification pairs (same person / different person / person vs own deepfake, 50/25/25,
identity-disjoint 95/5 split, see curation.training.pairs) and a pretrained IR backbone is fine-tuned on them with the adaptive
margin pair loss (or, as an option, the AdaFace margin head on identities), validating by EER with an error breakdown
per pair type. Defaults are the reference recipe (`../shared/spec/FORMATS.md`, see curation.training.config).

One code path with the embedding pass: photos are aligned by `embeddings.pipeline` into the same crop cache, and every
batch becomes model input through `embeddings.preprocess.to_input(..., "adaface")` (BGR, [-1, 1]).

Resuming: the pairs of epoch e are drawn from (seed, e) and flips from the same generator, DataLoader workers draw no
random numbers, and the torch RNG state (dropout) is saved with the optimizer, scheduler and scaler; so `--resume`
continues from `last` with the very batch that would have come next (see curation.training.run_folder for the crash-safe files).
The plateau scheduler steps only at the regular validations (every `val_every` steps); the extra validation at the end of
a run updates history and checkpoints but not the scheduler, so stopping at step k and resuming gives the same run as
never stopping.

Several GPUs or nodes: the same command under torchrun runs DistributedDataParallel (curation.training.distributed: who is
rank 0, the device, the collectives). --batch-size is the global batch, split over the processes by
`curation.training.data.RankSlices`, so the pairs of every step and the resume position (in global pairs) do not depend
on the number of processes; rank 0 prepares the data, logs and writes the run folder.

Example:
    python -m curation.train_on_clean work/ --init adaface_ir101_webface12m.ckpt --out runs/ft1
    python -m curation.train_on_clean work/ --out runs/ft1 --resume
    torchrun --nproc-per-node 4 -m curation.train_on_clean work/ --init adaface_ir101_webface12m.ckpt --out runs/ft2
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from curation.training import distributed
from curation.training.distributed import World
from curation.scoring.metrics import accuracy_at, equal_error_rate, verification_report
from curation.training.pairs import OWN_FAKE, PAIR_KINDS, Pairs
from curation.training.data import (
    CropImages,
    TrainData,
    TrainError,
    epoch_data,
    epoch_loader,
    ingest_folders,
    prepare_data,
    validation_pairs,
)
from curation.training.config import TrainConfig
from curation.training.run_folder import Kept, RunFolder, kept_from_state, kept_to_state
from curation.training.trainable import set_trainable
from embeddings import CheckpointError, build_backbone, load_backbone, read_checkpoint, save_backbone
from embeddings.backbones import EMBEDDING_SIZE
from embeddings.checkpoints import ONNX_ARCH
from embeddings.device import amp_dtype, autocast
from embeddings.embedders import EmbedderError, ModelSpec, parse_spec
from embeddings.losses import AdaFaceHead, AdaptiveMarginPairLoss
from embeddings.onnx_backbone import OnnxBackbone, export_onnx_backbone, load_onnx_backbone
from embeddings.onnx_torch import OnnxConversionError
from embeddings.pipeline import CropDataset
from embeddings.preprocess import to_input


# ---- model, optimisation, validation --------------------------------------------------------------------------------
@torch.no_grad()
def embed_rows(
    model: torch.nn.Module, crops: CropDataset, rows: np.ndarray, cfg: TrainConfig, device: torch.device, dtype,
    world: World = World(),
) -> torch.Tensor | None:
    """Unit embeddings [len(rows), 512] (float32, CPU) of the given crops, in eval mode, without flips.

    Under torchrun the batches are shared out (batch j to rank j % size) and gathered on rank 0, which returns them in
    order (the others return None). The batches are the single-process ones, so each crop is embedded in a batch of the
    same content and shape whatever the number of processes, and the validation EER does not depend on it.
    """
    ds = CropImages(crops, rows, np.zeros(len(rows), bool), np.full(len(rows), -1))
    size = 2 * cfg.batch_size
    n_batches = math.ceil(len(rows) / size)
    mine = [range(j * size, min((j + 1) * size, len(rows))) for j in range(world.rank, n_batches, world.size)]
    loader = DataLoader(
        ds, batch_sampler=mine, num_workers=cfg.workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    model.eval()
    out = []
    for x, _ in loader:
        with autocast(device, enabled=dtype is not None, dtype=dtype):
            unit, _ = model(to_input(x.to(device, non_blocking=True), "adaface"))
        out.append(unit.float().cpu())
    parts = distributed.gather(out)
    if parts is None:
        return None
    return torch.cat([parts[j % world.size][j // world.size] for j in range(n_batches)])


def validate(
    model: torch.nn.Module, data: TrainData, pairs: Pairs, cfg: TrainConfig, device: torch.device, dtype,
    world: World = World(),
) -> dict:
    """Validation metrics on the held-out identities' pairs: EER (bob) over all pairs with its threshold, the real-only
    EER (same vs different person), the deepfake FAR at the all-pairs EER threshold (None without deepfakes), the
    organisers' EER, accuracy at the fixed threshold, and error rates per pair type at the EER threshold. Under torchrun every rank
    embeds its share and gets rank 0's metrics, so all take the same scheduler decision."""
    rows = np.unique(np.concatenate([pairs.a, pairs.b]))
    emb = embed_rows(model, data.crops, rows, cfg, device, dtype, world)
    if emb is None:
        return distributed.broadcast(None)
    ia, ib = np.searchsorted(rows, pairs.a), np.searchsorted(rows, pairs.b)
    scores = (emb[ia] * emb[ib]).sum(1).numpy().astype(np.float64)
    report = verification_report(scores, pairs.label, pairs.kind, type_names=PAIR_KINDS, curve=False)
    real = pairs.kind != OWN_FAKE
    fakes = report.per_type.get(PAIR_KINDS[OWN_FAKE])
    return distributed.broadcast({
        "eer": report.eer,
        "eer_threshold": report.eer_threshold,
        # the two figures a user watches: how well real people are told apart (same vs different person only), and
        # how many deepfakes of a person pass as that person at the all-pairs EER threshold
        "eer_real": equal_error_rate(scores[real], pairs.label[real]).eer if 0 < pairs.label[real].sum() < real.sum()
        else None,
        "fake_far": fakes.rate if fakes is not None else None,
        "eer_roc": report.eer_roc,
        "accuracy": accuracy_at(scores, pairs.label, cfg.accuracy_threshold),
        "accuracy_threshold": cfg.accuracy_threshold,
        "accuracy_at_eer_threshold": report.accuracy,
        "per_type": {name: r.rate for name, r in report.per_type.items()},
        "tar_at_far": {k: v.tar for k, v in report.tar_at_far.items()},
        "n_pairs": report.n_pos + report.n_neg,
    })


def warmup_scale(step: int, warmup_steps: int) -> float:
    """The learning-rate factor of optimizer step `step` (0-based) under a linear warm-up of `warmup_steps` steps:
    (step + 1) / warmup_steps while warming up, 1 after (and with no warm-up).

    Example:
        >>> [warmup_scale(s, 4) for s in range(5)]
        [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


def distill_loss(unit: torch.Tensor, teacher: torch.nn.Module, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos) between the unit embeddings `unit` [N, D] of model input `x` and those the frozen `teacher` (the
    initial weights, in eval mode) gives the same input, over the rows `real` (a bool mask: the batch's real photos;
    deepfakes are free to move). Same crop, same flip: the batch as the model saw it.

    Why: training the last layers with a high learning rate pushes own-deepfakes away fast but also drags real photos
    off what the pretrained model knew about them (real EER rises); this term holds them (benchmarks/noisy_vs_clean.py).
    Under torchrun `x` is this rank's slice: the term is this rank's sum x ranks / the global batch's count of real
    photos, so DDP's average of the gradients (and of the logged loss) is the global batch's mean, as in one process.
    """
    n_real = distributed.total(real.sum())
    if n_real == 0:
        return unit.sum() * 0.0
    with torch.no_grad():
        target, _ = teacher(x[real])
    gap = (1 - (unit[real].float() * target.float()).sum(1)).sum()
    return gap * distributed.world().size / n_real


def train_step(
    model, head, loss_fn, batch, opt, scaler, cfg: TrainConfig, device: torch.device, dtype, lr_scale: float = 1.0,
    teacher: torch.nn.Module | None = None,
) -> float:
    """One optimizer step on a batch from the epoch's loader (uint8 crops, turned into model input here by to_input);
    returns the loss. `head` is the AdaFace head (objective adaface) or None; `dtype` the autocast dtype or None.
    `lr_scale` multiplies the learning rate for this step only (the warm-up): the optimizer's own learning rate, which
    the plateau scheduler sets and the saved state holds, is restored right after, so warm-up and scheduler never
    compound and a resumed run replays the same rates. `teacher` (with cfg.distill > 0): the frozen initial model of
    `distill_loss`; every real photo of the batch (each pair's first crop, the second unless it is a deepfake) counts.
    Under torchrun `model` and `head` are DDP-wrapped, the batch is this rank's slice, and the loss returned is the mean
    over ranks: the global batch's loss, the same on every rank."""
    model.train()
    if cfg.objective == "pair":
        crop_a, crop_b, label, kind = batch
        # uint8 goes to the GPU (4x fewer bytes than float), the convention is applied there
        x = to_input(torch.cat([crop_a, crop_b]).to(device, non_blocking=True), "adaface")
        with autocast(device, enabled=dtype is not None, dtype=dtype):
            unit, _ = model(x)
        n = crop_a.shape[0]
        cos = (unit[:n].float() * unit[n:].float()).sum(1)
        loss = loss_fn(cos, label.to(device))
        if teacher is not None:
            real = torch.cat([torch.ones(n, dtype=torch.bool), kind != OWN_FAKE]).to(device)
            with autocast(device, enabled=dtype is not None, dtype=dtype):
                loss = loss + cfg.distill * distill_loss(unit, teacher, x, real)
    else:
        crops, target = batch
        target = target.to(device)
        x = to_input(crops.to(device, non_blocking=True), "adaface")
        with autocast(device, enabled=dtype is not None, dtype=dtype):
            unit, norm = model(x)
        loss = F.cross_entropy(head(unit.float(), norm.float(), target), target)
        if teacher is not None:  # the AdaFace objective trains on real photos only
            with autocast(device, enabled=dtype is not None, dtype=dtype):
                loss = loss + cfg.distill * distill_loss(unit, teacher, x, torch.ones(len(x), dtype=torch.bool,
                                                                                      device=device))
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip is not None:
        scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    scheduled = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] *= lr_scale
    try:
        scaler.step(opt)
    finally:
        for g, lr in zip(opt.param_groups, scheduled):
            g["lr"] = lr
    scaler.update()
    value = distributed.mean(loss.detach())
    if not math.isfinite(value):
        raise TrainError(f"the loss became {value}; lower --lr or set --grad-clip (or --precision fp32/bf16)")
    return value


# ---- the run --------------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a call to `train` did: the losses of the steps it ran, where things are, a fingerprint of the final
    weights (sha256 of their state_dict, see curation.training.distributed.fingerprint; equal on every rank under
    torchrun), and the ONNX files it wrote (from --init onnx:FILE, on rank 0)."""

    run: Path
    steps: list[int]
    losses: list[float]
    history: list[dict]
    best: Kept | None
    weights: str
    onnx: list[Path] = field(default_factory=list)  # best.onnx and last.onnx of a run from --init onnx:FILE


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resumed_rng(state: dict, world: World) -> dict | None:
    """This rank's saved RNG state: its own when the run goes on with as many processes as it was saved with; with
    another number, rank 0 takes rank 0's and the other ranks keep the fresh stream they were seeded with (None)."""
    states = state.get("rng_ranks") or [state["rng"]]
    if len(states) == world.size:
        return states[world.rank]
    return state["rng"] if world.is_main else None


def init_source(cfg: TrainConfig) -> ModelSpec | None:
    """What --init names, as a model spec (None for "random"): `onnx:FILE` and `ir:[ARCH:]FILE` in the syntax of
    `--model` (embeddings.embedders.parse_spec), a bare path as an IR checkpoint. Options that do not apply to it are
    refused here, before any work."""
    if cfg.init == "random":
        spec = None
    elif cfg.init == "dlib" or cfg.init.startswith(("ir:", "onnx:")):
        try:
            spec = parse_spec(cfg.init)
        except EmbedderError as exc:
            raise TrainError(f"--init: {exc}") from None
    else:
        spec = ModelSpec("ir", Path(cfg.init).expanduser())
    if spec is not None and spec.kind == "dlib":
        raise TrainError("--init dlib: dlib's ResNet cannot be fine-tuned here; start from an ONNX embedder "
                         "(onnx:FILE) or an IR checkpoint")
    if spec is not None and spec.kind == "onnx" and cfg.arch is not None:
        raise TrainError(f"--arch {cfg.arch} applies to IR backbones; --init {cfg.init} is an ONNX embedder")
    if spec is not None and spec.kind == "ir" and spec.arch and cfg.arch and spec.arch != cfg.arch:
        raise TrainError(f"--init {cfg.init} says {spec.arch}, --arch says {cfg.arch}")
    if cfg.input_convention is not None and (spec is None or spec.kind != "onnx"):
        raise TrainError("--input-convention applies to --init onnx:FILE only (IR backbones take the adaface "
                         "convention)")
    return spec


def _initial_model(cfg: TrainConfig, say: Callable[[str], None]) -> torch.nn.Module:
    spec = init_source(cfg)
    if spec is not None and spec.kind == "onnx":
        try:
            model = load_onnx_backbone(spec.path, cfg.input_convention)
        except OnnxConversionError as exc:
            raise TrainError(f"--init {exc}") from None
        say(f"initial weights: {spec.path} (ONNX embedder, input convention {model.convention}; the run folder gets "
            "init.onnx, and best.onnx / last.onnx in the same convention when the run ends)")
        return model
    if spec is None:
        arch = cfg.arch or "ir_101"
        say(
            "\n" + "!" * 100 + f"\n!! WARNING: --init random: training {arch} from RANDOM weights. Fine-tuning needs a"
            " pretrained backbone\n!! (e.g. AdaFace IR-101); from scratch, this recipe (lr 5e-6, a few epochs) learns"
            " next to nothing.\n" + "!" * 100
        )
        return build_backbone(arch)
    try:
        model = load_backbone(spec.path, arch=spec.arch or cfg.arch)
    except CheckpointError as exc:
        raise TrainError(f"--init {exc}") from None
    say(f"initial weights: {spec.path} ({model.arch})")
    return model


def _resumed_model(cfg: TrainConfig, run: RunFolder) -> torch.nn.Module:
    """The model of last.pt: an IR backbone, or the module rebuilt from RUN/init.onnx with the saved state_dict."""
    ckpt = read_checkpoint(run.last)
    if ckpt.arch != ONNX_ARCH:
        return load_backbone(run.last, arch=cfg.arch)
    try:
        model = load_onnx_backbone(run.init_onnx, cfg.input_convention)
    except OnnxConversionError as exc:
        raise TrainError(f"cannot resume: {exc}") from None
    if model.source_sha256 != ckpt.meta.get("init_sha256"):
        raise TrainError(f"cannot resume: {run.init_onnx} is not the ONNX file {run.last} was trained from")
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model


def _teacher(
    cfg: TrainConfig, run: RunFolder, model: torch.nn.Module, *, fresh: bool, device: torch.device
) -> torch.nn.Module | None:
    """The frozen initial model `--distill` holds the real photos to (None when distill is 0), in eval mode.

    A fresh run copies the model it starts from; a resumed run rebuilds the same initial weights: from RUN/init.onnx
    (whose hash _resumed_model checked) for an ONNX embedder, from --init (or the seed, for --init random) for an IR
    backbone. A frozen copy rather than embeddings stored once: it needs no index of crops and flips, costs one forward
    pass without gradients per step, and is the same on every rank under torchrun.
    """
    if not cfg.distill:
        return None
    if fresh:
        teacher = copy.deepcopy(model)
    elif isinstance(model, OnnxBackbone):
        teacher = load_onnx_backbone(run.init_onnx, model.convention)
    else:
        torch.manual_seed(cfg.seed)  # as at the start of the run: --init random draws the same weights again
        teacher = _initial_model(cfg, lambda _: None)
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def _meta(cfg: TrainConfig, model, step: int, epoch: int, metrics: dict | None) -> dict:
    meta = {"step": step, "epoch": epoch, "arch": model.arch, "init": cfg.init, "objective": cfg.objective}
    if isinstance(model, OnnxBackbone):
        meta.update(init_sha256=model.source_sha256, input_convention=model.convention)
    if metrics is not None:
        meta.update(eer=metrics["eer"], eer_threshold=metrics["eer_threshold"])
    return meta


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TrainResult:
    """Fine-tune according to `cfg`, writing everything into `cfg.out` (see curation.training.run_folder for the layout).

    Inputs: a resolved TrainConfig; `resume` to continue the run in `cfg.out` from its last save; whether to show a
    progress bar; where to send log lines. Output: TrainResult (the per-step losses of this call, the validation
    history, the best checkpoint). Raises TrainError (one line, for the user) for unusable data, run folders or
    checkpoints.

    Under torchrun (WORLD_SIZE > 1) this process is one rank of a DistributedDataParallel run: `cfg.batch_size` is the
    global batch, split evenly over the ranks, so a step sees the same pairs whatever the number of processes; rank 0
    prepares the data and is the only one that logs, shows progress and writes the run folder; every rank returns the
    same losses, history and weights (see curation.training.distributed).

    Example:
        >>> cfg = resolve_config(cli_values={"data": "work", "init": "ir101.ckpt", "out": "runs/a", "max_steps": 500})
        >>> result = train(cfg)
        >>> result.best.eer, result.history[-1]["per_type"]
    """
    world, device = distributed.init(cfg.device)
    try:
        return _train(cfg, world, device, resume=resume, progress=progress and world.is_main,
                      say=say if world.is_main else lambda _: None)
    finally:
        distributed.cleanup()


def _train(
    cfg: TrainConfig, world: World, device: torch.device, *, resume: bool, progress: bool, say: Callable[[str], None]
) -> TrainResult:
    """The body of `train`, run by every rank (rank 0 alone writes files; the others get `say` silenced)."""
    run = RunFolder(cfg.out)
    run.check()
    if not resume and run.has_run():
        raise TrainError(f"{cfg.out} already holds a run: add --resume to continue it, or choose another --out")
    per_rank = 1 if cfg.objective == "pair" else 2  # batch norm needs two images per process
    if cfg.batch_size % world.size or cfg.batch_size // world.size < per_rank:
        raise TrainError(
            f"--batch-size {cfg.batch_size} is the global batch, split over the {world.size} processes: it must be a"
            f" multiple of {world.size} and at least {per_rank * world.size}"
        )
    dtype = amp_dtype(device, cfg.precision)
    state = _load_resume_state(run) if resume else None
    if state is None:
        torch.manual_seed(cfg.seed)  # random initial weights come from the seed
        model = _initial_model(cfg, say)  # before the data, so a bad checkpoint fails before hours of alignment
    else:
        model = _resumed_model(cfg, run)
    if world.is_main:
        for folder in ingest_folders(cfg):  # the ingest's own work folder inside RUN, never listed nor deleted here
            run.owned.manage(folder)
    # Rank 0 aligns into the crop cache while the others wait; they receive the very same table (see from_main).
    data = distributed.from_main(lambda: prepare_data(cfg, say=say, progress=progress), "preparing the data")
    for line in data.notes:
        say(line)
    vpairs, vstats = validation_pairs(data, cfg)
    if min(vpairs.counts()["same"], len(vpairs) - vpairs.counts()["same"]) == 0:
        raise TrainError(
            f"the validation split ({len(data.val_ids)} identities) gives no usable pairs: it needs identities with at"
            " least two real photos; raise --val-fraction or add photos"
        )
    say(f"validation: {vstats.describe()}")
    if world.is_main:
        # Written once the inputs are known to be usable (so a failed start leaves no run behind), and on resume too:
        # it records the options the run now continues with.
        run.write_config(cfg.to_dict())
        if isinstance(model, OnnxBackbone) and state is None:
            run.keep_init_onnx(init_source(cfg).path, model.source_sha256)
    classes = {name: i for i, name in enumerate(data.train_ids)} if cfg.objective == "adaface" else None

    # The AdaFace head and dropout draw from here on, each rank from a stream of its own (rank 0's is the
    # single-process one); a resumed run restores the states.
    teacher = _teacher(cfg, run, model, fresh=state is None, device=device)
    torch.manual_seed(cfg.seed + world.rank)
    say(set_trainable(model, cfg.trainable).describe())
    model.to(device)
    head = None
    if classes is not None:
        size = getattr(model, "embedding_size", None) or EMBEDDING_SIZE  # 512 for IR; an ONNX embedder's own
        head = AdaFaceHead(len(classes), size, m=cfg.adaface_m, h=cfg.adaface_h, s=cfg.adaface_s).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, threshold=cfg.lr_threshold
    )
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    loss_fn = AdaptiveMarginPairLoss(cfg.margin_s, cfg.margin_base, cfg.margin_alpha)

    step, epoch, pos, kept, loss_sum, loss_n = 0, 0, 0, [], 0.0, 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if head is not None:
            head.load_state_dict(state["head"])
        step, epoch, pos = int(state["step"]), int(state["epoch"]), int(state["step_in_epoch"])
        kept = kept_from_state(state["kept"])
        loss_sum, loss_n = float(state["loss_sum"]), int(state["loss_n"])
        if world.is_main:
            run.reconcile(step, kept)
        rng = _resumed_rng(state, world)
        if rng is not None:
            _set_rng_state(rng)
        say(f"resuming {run.path} at step {step} (epoch {epoch + 1}, batch {pos})")
        saved_size = int(state.get("world_size", 1))
        if saved_size != world.size:
            say(f"note: saved by {saved_size} process(es), continued by {world.size}: every step trains on the same"
                " pairs, but batch-norm statistics and dropout are per process, so this is not bit for bit the run that"
                f" {saved_size} process(es) would have continued")
    # Gradients are averaged over ranks by DDP; the unwrapped model and head are what is validated and saved.
    net = distributed.wrap(model, device)
    head_net = distributed.wrap(head, device) if head is not None else None

    first = epoch_data(data, cfg, epoch, classes)
    if first.steps == 0:
        raise TrainError(
            f"fewer training {'pairs' if cfg.objective == 'pair' else 'photos'} ({len(first.dataset)}) than one batch"
            f" ({cfg.batch_size}): lower --batch-size or add photos"
        )
    if first.stats is not None:
        say(f"training: {first.stats.describe()}")
    else:
        say(f"training: {len(first.dataset):,} real photos of {len(classes):,} identities (AdaFace head, one class each)")
    if world.size > 1:
        say(f"distributed: {world.size} processes ({device.type}), {cfg.batch_size // world.size} of the"
            f" {cfg.batch_size} {'pairs' if cfg.objective == 'pair' else 'photos'} of each step per process")
    total = first.steps * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, first.steps * cfg.epochs)
    logger = _make_logger(cfg, run) if world.is_main else None
    started = time.monotonic()
    steps_run: list[int] = []
    losses: list[float] = []
    last_validated = -1 if state is None else step

    def checkpoint(regular: bool) -> dict:
        """Validate, record, keep the best, save last: the one place a run's files change (on rank 0)."""
        nonlocal kept, loss_sum, loss_n, last_validated
        if world.size > 1:
            distributed.sync_buffers(model)
            _check_in_step(model, step)
        metrics = validate(model, data, vpairs, cfg, device, dtype, world)
        elapsed = time.monotonic() - started
        record = {
            "step": step,
            "epoch": epoch + (pos / max(first.steps, 1)),
            "lr": opt.param_groups[0]["lr"] * warmup_scale(step, cfg.warmup_steps),
            "train_loss": loss_sum / loss_n if loss_n else None,
            **metrics,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "steps_per_s": len(steps_run) / elapsed if steps_run and elapsed > 0 else None,
            "scheduled": regular,
        }
        if regular:
            sched.step(metrics["eer"])  # the same EER on every rank, so the same learning rate
        loss_sum, loss_n = 0.0, 0
        last_validated = step
        rngs = distributed.gather(_rng_state())
        if world.is_main:
            run.append_history(record)
            meta = _meta(cfg, model, step, epoch, metrics)
            kept, _ = run.keep_checkpoint(
                kept, step, metrics["eer"], cfg.keep_best, lambda p: save_backbone(model, p, **meta)
            )
            ranks = {"world_size": world.size, "rng_ranks": rngs} if world.size > 1 else {}
            run.save_last(
                {
                    "format": "facecur-train-state-v1",
                    "step": step,
                    "epoch": epoch,
                    "step_in_epoch": pos,
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "head": head.state_dict() if head is not None else None,
                    "kept": kept_to_state(kept),
                    "loss_sum": loss_sum,
                    "loss_n": loss_n,
                    "rng": rngs[0],
                    **ranks,
                },
                lambda p: save_backbone(model, p, **meta),
            )
            run.prune(kept)
            if logger is not None:
                logger(record, step)
            tqdm.write(_describe(record))
        kept = distributed.broadcast(kept)  # the others wait here (patiently) while rank 0 writes
        return record

    bar = tqdm(total=total, initial=step, unit="step", desc="fine-tuning", disable=not progress, dynamic_ncols=True)
    try:
        if state is None:
            checkpoint(regular=True)  # step 0: the initial weights' EER, so every gain is measured against it
        ep = first
        while step < total:
            for batch in epoch_loader(ep.dataset, cfg, pos * cfg.batch_size, device, world.rank, world.size):
                value = train_step(net, head_net, loss_fn, batch, opt, scaler, cfg, device, dtype,
                                   warmup_scale(step, cfg.warmup_steps), teacher)
                step, pos = step + 1, pos + 1
                loss_sum, loss_n = loss_sum + value, loss_n + 1
                steps_run.append(step)
                losses.append(value)
                bar.update(1)
                lr_now = opt.param_groups[0]["lr"] * warmup_scale(step - 1, cfg.warmup_steps)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr_now:.2g}")
                if logger is not None and step % 10 == 0:
                    logger({"train_loss_step": value, "lr": lr_now}, step)
                if step % cfg.val_every == 0:
                    checkpoint(regular=True)
                if step >= total:
                    break
            if pos >= ep.steps:
                epoch, pos = epoch + 1, 0
                if step < total:
                    ep = epoch_data(data, cfg, epoch, classes)
        if last_validated != step:
            checkpoint(regular=False)
    finally:
        bar.close()
    history = run.history()
    best = kept[0] if kept else None
    exported = []
    if isinstance(model, OnnxBackbone) and world.is_main:
        exported = _export_onnx(model, run, best, data, vpairs, say)
    return TrainResult(run.path, steps_run, losses, history, best, distributed.fingerprint(model), exported)


PARITY_CROPS = 32  # validation crops the exported ONNX files are checked on


def _export_onnx(
    model: OnnxBackbone, run: RunFolder, best: Kept | None, data: TrainData, vpairs: Pairs, say: Callable[[str], None]
) -> list[Path]:
    """RUN/best.onnx and RUN/last.onnx: the weights of best.pt and last.pt in the source graph and input convention,
    each checked against the torch module holding them on real validation crops before it is renamed into place."""
    rows = np.unique(np.concatenate([vpairs.a, vpairs.b]))[:PARITY_CROPS]
    crops = torch.stack([data.crops[int(r)] for r in rows]).numpy()
    out = []
    for path, pt in ([(run.best_onnx, run.best)] if best is not None else []) + [(run.last_onnx, run.last)]:
        ckpt = read_checkpoint(pt)
        tuned = load_onnx_backbone(run.init_onnx, model.convention)
        tuned.load_state_dict(ckpt.state_dict, strict=True)
        meta = {"fine_tuned_from": run.init_onnx.name, "torch_checkpoint": pt.name,
                **{k: ckpt.meta[k] for k in ("step", "eer") if k in ckpt.meta}}
        parity = []
        try:
            run.write_file(path, lambda tmp: parity.append(export_onnx_backbone(tuned, run.init_onnx, tmp, crops, meta)))
        except OnnxConversionError as exc:
            raise TrainError(f"{exc} ({pt.name} holds the fine-tuned weights)") from None
        say(f"{path}: onnxruntime vs torch max |diff| {parity[0].max_abs_diff:.1e} on {parity[0].n_images} validation "
            f"crops (batches {', '.join(map(str, parity[0].batch_sizes))}); use it as --model onnx:{path}")
        out.append(path)
    return out


def _check_in_step(model: torch.nn.Module, step: int) -> None:
    """Every rank must hold the same weights at a checkpoint (DDP keeps them so; this makes sure before saving)."""
    prints = distributed.all_gather(distributed.fingerprint(model))
    if len(set(prints)) > 1:
        raise TrainError(
            f"the processes' weights differ at step {step} (fingerprints {', '.join(p[:12] for p in prints)}): stop"
            " and resume from the last save with --resume"
        )


def _describe(record: dict) -> str:
    types = ", ".join(f"{k} {v:.3f}" for k, v in record["per_type"].items())
    loss = "n/a" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
    fake = "n/a (no deepfakes)" if record.get("fake_far") is None else f"{record['fake_far']:.3f}"
    real = "n/a" if record.get("eer_real") is None else f"{record['eer_real']:.4f}"
    return (
        f"step {record['step']}: EER {record['eer']:.4f} (thr {record['eer_threshold']:.3f}), real-only EER "
        f"{real}, deepfake FAR at that threshold {fake}; "
        f"acc@{record['accuracy_threshold']:g} {record['accuracy']:.4f}, errors {types}, train loss {loss}, "
        f"lr {record['lr']:.2g}"
    )


def _load_resume_state(run: RunFolder) -> dict | None:
    """The training state matching last.pt, or None when the run never got to its first save (it starts over)."""
    if not run.last.exists():
        return None
    try:
        step = int(read_checkpoint(run.last).meta["step"])
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        raise TrainError(f"{run.last}: cannot resume from it ({exc})") from None
    try:
        return run.load_state(step)
    except FileNotFoundError as exc:
        raise TrainError(str(exc)) from None


def _make_logger(cfg: TrainConfig, run: RunFolder) -> Callable[[dict, int], None] | None:
    """Weights & Biases or TensorBoard logging when asked for; a clear error when the package is missing."""
    if cfg.log == "none":
        return None

    def numbers(record: dict) -> dict:
        flat = {}
        for k, v in record.items():
            if isinstance(v, dict):
                flat.update({f"{k}/{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float))})
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                flat[k] = v
        return flat

    if cfg.log == "wandb":
        try:
            import wandb
        except ImportError:
            raise TrainError("--log wandb: the wandb package is not installed (pip install wandb), or drop --log") from None
        run.owned.manage("wandb")
        wandb.init(project="facecur", name=run.path.name, dir=str(run.path), config=cfg.to_dict(), resume="allow")
        return lambda record, step: wandb.log(numbers(record), step=step)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError(
            "--log tensorboard: the tensorboard package is not installed (pip install tensorboard), or drop --log"
        ) from None
    run.owned.manage("tensorboard")
    writer = SummaryWriter(log_dir=str(run.path / "tensorboard"))

    def log(record: dict, step: int) -> None:
        for k, v in numbers(record).items():
            writer.add_scalar(k, v, step)
        writer.flush()

    return log
