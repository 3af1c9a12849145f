"""`python -m curation.train_on_clean`: fine-tune a face backbone on cleaned labels (the command; the loop is
`curation.training.loop.train`).

This is what the cleaning is for: the labels the store holds after review (exactly what `labels.export` would write) or
an exported dataset folder become verification pairs (same person / different person / person vs own deepfake) and a
pretrained backbone is fine-tuned on them, validating by EER with an error breakdown per pair type. See
`curation.training` for the pieces: config (the recipe), data and pairs, the run folder, torchrun, the loop.

Example:
    python -m curation.train_on_clean work/ --init adaface_ir101_webface12m.ckpt --out runs/ft1
    python -m curation.train_on_clean work/ --out runs/ft1 --resume
    torchrun --nproc-per-node 4 -m curation.train_on_clean work/ --init adaface_ir101_webface12m.ckpt --out runs/ft2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from curation.training import distributed
from curation.training.config import (
    CHOICES, DATA_ORDER_KEYS, MODEL_KEYS, ConfigError, TrainConfig, load_config, resolve_config,
)
from curation.training.presets import PRESETS
from curation.training.distributed import World
from curation.training.loop import TrainResult, train
from curation.training.run_folder import RunFolder
from labels.cli import UserError, command_parser, run_cli


# ---- command line ---------------------------------------------------------------------------------------------------
# Help per option; every TrainConfig field becomes a --flag of the same name (underscores as dashes).
_HELP = {
    "detector": "face detector for alignment: dlib (default) or scrfd:<file.onnx>; use the one the cleaning run used",
    "aligned": "the photos already are 112x112 ArcFace-template crops (no detection; only the size is checked)",
    "arch": "backbone depth: ir_18|ir_34|ir_50|ir_101 (default: read from --init; ir_101 with --init random)",
    "input_convention": "with --init onnx:FILE: the file's input convention, arcface_rgb (RGB, (x-127.5)/128) or"
    " adaface (BGR, (x-127.5)/127.5); default: read from the file's metadata as --model onnx: does, else arcface_rgb."
    " RUN/best.onnx keeps it",
    "trainable": "which layers train: all (default) or last:K, the K layers nearest the output (a layer = the"
    " parameters one operation uses, found by a forward pass, so it means the same for IR and ONNX models)",
    "warmup_steps": "linear learning-rate warm-up over the first N steps (default 0: none)",
    "fake_fraction": "share of training pairs that are person-vs-own-deepfake pairs, 0..0.5 (default 0.25, the"
    " recipe's 50/25/25; same-person pairs stay half, different-person pairs take the rest). Validation keeps 0.25",
    "distill": "weight of a term that holds the real photos at the initial model's embeddings: distill x mean(1 -"
    " cos(embedding, initial embedding of the same crop and flip)) over the batch's real photos, added to the loss"
    " (default 0: off). Lets a higher lr push deepfakes away without forgetting real faces (finetune-pretrained: 50)",
    "unreviewed": "open flags on a work folder: keep (default) or apply their suggested action, as export does",
    "objective": "pair (adaptive-margin pair loss, the recipe) or adaface (AdaFace margin head on identities)",
    "batch_size": "pairs per step (photos per step with --objective adaface); default 32. Under torchrun this is"
    " the global batch, split evenly over the processes (a multiple of their number)",
    "lr": "AdamW learning rate (default 5e-6)",
    "weight_decay": "AdamW weight decay (default 1e-2)",
    "epochs": "passes over the training pairs (default 1); pairs are redrawn each epoch",
    "max_steps": "stop after this many steps (default: run all epochs)",
    "val_every": "validate, checkpoint and step the LR scheduler every N steps (default 100)",
    "val_fraction": "share of identities held out for validation (default 0.05)",
    "val_data": "validate on every identity of this work or dataset folder instead of a split of DATA",
    "max_pos_per_identity": "cap on same-person pairs per identity (default: all C(n,2), as the recipe)",
    "margin_s": "pair loss scale s (default 64)",
    "margin_base": "pair loss base margin m_b (default 0.35)",
    "margin_alpha": "pair loss adaptive margin alpha (default 0.1)",
    "adaface_m": "AdaFace head margin m (default 0.4)",
    "adaface_h": "AdaFace head h (default 0.333)",
    "adaface_s": "AdaFace head scale s (default 64)",
    "lr_factor": "ReduceLROnPlateau factor (default 0.5)",
    "lr_patience": "ReduceLROnPlateau patience, in validations (default 10)",
    "lr_threshold": "ReduceLROnPlateau threshold (default 1e-4)",
    "accuracy_threshold": "cosine threshold for the reported accuracy (default 0.2)",
    "keep_best": "how many best checkpoints by validation EER to keep (default 5)",
    "grad_clip": "clip the gradient norm to this value (default: no clipping)",
    "precision": "auto (bf16, or fp16 with a GradScaler, on CUDA; fp32 on CPU) | fp32 | fp16 | bf16",
    "flip": "random horizontal flips of training photos",
    "device": "auto (default), cpu or cuda[:N]; under torchrun auto or cuda (each process takes cuda:LOCAL_RANK)",
    "workers": "DataLoader worker processes decoding crops (default 2)",
    "seed": "seed of the split, the pairs, the flips and the initialisation (default 0)",
    "log": "also log to wandb or tensorboard (the package must be installed)",
}
_EPILOG = """examples:
  python -m curation.train_on_clean work --init adaface_ir101_webface12m.ckpt --out runs/ft1
  python -m curation.train_on_clean clean_export/ --init model.safetensors --out runs/ft2 --max-steps 20000
  python -m curation.train_on_clean work --init ir101.ckpt --out runs/ft3 --config recipe.toml --lr 1e-5
  python -m curation.train_on_clean work --init onnx:mobilefacenet.onnx --out runs/mfn --config finetune-pretrained
  python -m curation.evaluate --model onnx:runs/mfn/best.onnx --pairs val_pairs.csv --root photos --out eval/mfn
  python -m curation.train_on_clean --out runs/ft1 --resume            # continue after a crash or Ctrl-C
  python -m curation.train_on_clean work --init random --arch ir_18 --out runs/smoke --max-steps 50 --device cpu
  torchrun --nproc-per-node 4 -m curation.train_on_clean work --init ir101.ckpt --out runs/ft4 --batch-size 128
  torchrun --nproc-per-node 4 -m curation.train_on_clean --out runs/ft4 --resume

Under torchrun (DistributedDataParallel: NCCL on GPUs, gloo on the CPU) --batch-size is the global batch: each of the
N processes takes batch/N pairs of every step, so a step sees the same pairs whatever N is, --lr keeps its meaning and
--max-steps, --val-every and resuming count the same steps. Rank 0 aligns the photos (the others wait, then share its
table), logs and writes RUN; validation is shared out and gives the single-process EER. Resuming with the same N
continues exactly; with another N the pairs of every step are the same, but batch-norm statistics and dropout are per
process. Across nodes, DATA, its crop cache and RUN must be on a file system every node sees at the same path.

DATA is a work folder (labels.sqlite: trains on the labels as reviewed, exactly what `labels.export` would write) or a
dataset folder such as an export (ingested into RUN/work first). Precedence: defaults (the reference recipe) < --config
(a preset: recipe = the defaults, finetune-pretrained = fine-tuning a pretrained embedder on a CPU; or a TOML / YAML
file of the same option names) < flags. The resolved config is printed and saved as RUN/config.json.

--init takes an IR checkpoint (AdaFace .ckpt, CVLFace model.pt / .safetensors, a run's best.pt; also as
ir:[ARCH:]FILE), an ArcFace-style ONNX embedder as onnx:FILE (the --model syntax), or random.

RUN gets performance_history.json (one record per validation: step, lr, train loss, EER over all pairs and its
threshold, real-only EER, deepfake FAR at that threshold, the organisers' EER, accuracy at the fixed threshold, error
rates per pair type), last.pt and best.pt (load them with embeddings.load_backbone, or pass them to --init / --model
ir:<arch>:<file>), checkpoints/ (the best by EER) and state/ (what --resume needs). From --init onnx:FILE, RUN also
gets init.onnx (the source, which --resume rebuilds the model from) and, when the run ends, best.onnx and last.onnx:
the fine-tuned weights in FILE's graph and input convention, checked against the torch module on validation crops,
usable unchanged as --model onnx:RUN/best.onnx in curation.clean, curation.evaluate and curation.predict."""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "python -m curation.train_on_clean",
        "Fine-tune an IR face backbone on cleaned labels: same-person / different-person / own-deepfake "
        "pairs, adaptive-margin loss, validation by EER with errors per pair type.",
        _EPILOG, argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("data", nargs="?", metavar="DATA", help="work folder (labels.sqlite) or dataset folder")
    parser.add_argument("--init", metavar="SPEC", help="pretrained weights: an IR checkpoint (or ir:[ARCH:]FILE),"
                        " onnx:FILE (an ONNX embedder, as --model takes it), or 'random' (warns)")
    parser.add_argument("--out", metavar="RUN", help="run folder (created)")
    parser.add_argument("--config", metavar="PRESET|FILE",
                        help=f"a preset ({', '.join(PRESETS)}) or a TOML / YAML file of options")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last save")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    hints = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for name, text in _HELP.items():
        flag = "--" + name.replace("_", "-")
        if name in ("flip", "aligned"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif name in CHOICES:
            parser.add_argument(flag, choices=CHOICES[name], help=text)
        else:
            parser.add_argument(flag, metavar=hints[name].split(" ")[0].upper(), help=text)
    return parser


def _resolve(args: dict) -> tuple[TrainConfig, bool]:
    """(config, resume) from parsed arguments; a resumed run starts from its saved config.json."""
    resume = bool(args.pop("resume", False))
    args.pop("quiet", None)
    config_file = args.pop("config", None)
    file_values = load_config(config_file) if config_file else {}
    base = None
    if resume:
        out = args.get("out") or file_values.get("out")
        if not out:
            raise ConfigError("--resume needs --out RUN (the run folder to continue)")
        saved = RunFolder(out).config
        if not saved.exists():
            raise ConfigError(f"{saved}: not found; there is no run to resume in {out}")
        try:
            base = json.loads(saved.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{saved}: unreadable ({exc})") from None
    cfg = resolve_config(base=base, file_values=file_values, cli_values=args)
    if base is not None:
        def same(key: str, a, b) -> bool:
            if key in ("data", "val_data") and a and b:
                return Path(a).resolve() == Path(b).resolve()
            return a == b

        for keys, what in ((DATA_ORDER_KEYS, "the data order"), (MODEL_KEYS, "the weights")):
            changed = [k for k in keys if not same(k, getattr(cfg, k), base.get(k, getattr(TrainConfig(), k)))]
            if changed:
                raise ConfigError(
                    f"--resume cannot change {', '.join(changed)}: they decide {what} of the run in {cfg.out}"
                    " (start a new run with another --out instead)"
                )
    for name, what in (("data", "DATA (a work folder or dataset folder)"), ("out", "--out RUN"), ("init", "--init")):
        if not getattr(cfg, name):
            raise ConfigError(f"missing {what}" + (" (a checkpoint, onnx:FILE, or 'random')" if name == "init" else ""))
    return cfg, resume


def _run(args: dict, world: World) -> None:
    cfg, resume = _resolve(args)
    if world.is_main:
        print("configuration:\n" + "\n".join(f"  {k} = {v!r}" for k, v in cfg.to_dict().items()))
    result = train(cfg, resume=resume, progress=not args.get("quiet", False))
    if world.is_main:
        print(_summary(result))
    else:  # one line per rank, so a log shows every process ended with rank 0's weights
        print(f"rank {world.rank} of {world.size}: ran {len(result.steps)} step(s); weights {result.weights[:16]}")


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        world = distributed.world()
    except UserError as exc:  # torchrun's variables are unusable, so there is no rank to name in the message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    again = (f"`python -m curation.train_on_clean --out {args.get('out', 'RUN')} --resume` continues from the last save"
             if world.size == 1 else "the same torchrun command with --resume continues from the last save")
    return run_cli(lambda: _run(args, world), interrupted=again if world.is_main else "",
                   prefix="" if world.is_main else f"rank {world.rank}: ")


def _summary(result: TrainResult) -> str:
    lines = [f"ran {len(result.steps)} step(s); run folder {result.run}"]
    if result.history:
        first, last = result.history[0], result.history[-1]
        lines.append(f"validation EER: {first['eer']:.4f} at step {first['step']} -> {last['eer']:.4f} at step "
                     f"{last['step']}")
        for key, name in (("eer_real", "real-only EER"), ("fake_far", "deepfake FAR at the EER threshold")):
            if first.get(key) is not None and last.get(key) is not None:
                lines.append(f"{name}: {first[key]:.4f} -> {last[key]:.4f}")
    if result.best is not None:
        lines.append(f"best: EER {result.best.eer:.4f} at step {result.best.step} -> {result.run / 'best.pt'}")
    lines.append(f"history: {result.run / 'performance_history.json'}; last: {result.run / 'last.pt'} (weights "
                 f"{result.weights[:16]})")
    for path in result.onnx:
        lines.append(f"{path}: the fine-tuned ONNX embedder, same input convention as --init; use it as "
                     f"--model onnx:{path} in curation.clean, curation.evaluate and curation.predict")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

