"""The fine-tuning configuration: one small dataclass, defaults from the reference recipe, readable from TOML or YAML.

Why a dataclass and a file: like insightface's arcface_torch, one train script is driven by a small config, so a run is
described by a few lines a person can diff. Precedence is defaults < config file < command-line flags; the resolved
config is printed at start and saved as `RUN/config.json`, which is also what `--resume` reads back.

Defaults are the MMG team's recipe (`../shared/spec/FORMATS.md`): AdamW lr 5e-6, weight decay 1e-2, batch 32,
ReduceLROnPlateau(min, 0.5, patience 10, threshold 1e-4) on validation EER every 100 steps, adaptive margin s=64,
m_b=0.35, alpha=0.1, accuracy at threshold 0.2, the 5 best checkpoints kept, identity-disjoint 95/5 split.

`--config` also takes a preset by name (curation.training.presets: "recipe", the defaults; "finetune-pretrained").

Example (TOML; YAML takes the same keys, and dashes or underscores both work):
    arch = "ir_101"
    init = "adaface_ir101_webface12m.ckpt"
    lr = 5e-6
    max_steps = 20000

    >>> cfg = resolve_config(file_values=load_config_file("run.toml"), cli_values={"lr": 1e-5})
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from curation.training.presets import PRESETS
from curation.training.trainable import parse_trainable
from embeddings.backbones import ARCHS
from embeddings.preprocess import CONVENTIONS
from labels.cli import UserError


# Values a field may take, checked once here rather than deep inside the training loop.
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": ARCHS,
    "objective": ("pair", "adaface"),
    "unreviewed": ("keep", "apply"),
    "precision": ("auto", "fp32", "fp16", "bf16"),
    "log": ("none", "wandb", "tensorboard"),
    "input_convention": tuple(CONVENTIONS),
}

# Options that decide which pairs are drawn and in which order: changing them on --resume would not continue the run.
DATA_ORDER_KEYS = ("data", "val_data", "detector", "aligned", "seed", "batch_size", "val_fraction", "max_pos_per_identity", "objective", "flip", "unreviewed", "fake_fraction")
# Options that decide which weights exist and train: changing them on --resume would not load the saved state.
MODEL_KEYS = ("init", "arch", "input_convention", "trainable")


class ConfigError(UserError):
    """A config value or file the run cannot use; the message names the file or option and the reason."""


@dataclass
class TrainConfig:
    """Everything a fine-tuning run depends on. See `python -m curation.train_on_clean --help` for each option."""

    data: str = ""  # a work folder (with labels.sqlite) or a dataset folder (e.g. an export)
    out: str = ""  # the run folder
    init: str = ""  # a backbone checkpoint (or ir:[<arch>:]<checkpoint>), onnx:<file.onnx>, or "random"
    arch: str | None = None  # None: taken from the checkpoint (ir_101 with --init random)
    input_convention: str | None = None  # --init onnx: the file's input convention (None: its metadata, else arcface_rgb)
    trainable: str = "all"  # "all", or "last:K": only the K layers nearest the output train (curation.training.trainable)
    detector: str = "dlib"  # face detector for alignment: dlib or scrfd:<file.onnx> (use the one the cleaning run used)
    aligned: bool = False  # the photos already are 112x112 ArcFace-template crops: no detection
    unreviewed: str = "keep"  # open flags on a work folder: keep the photos as labelled, or apply the suggested action
    objective: str = "pair"  # pair: adaptive-margin pair loss (the recipe); adaface: AdaFace margin head on identities
    batch_size: int = 32  # pairs per step (images per step with objective adaface)
    lr: float = 5e-6
    warmup_steps: int = 0  # linear learning-rate warm-up from lr/N to lr over the first N steps (0: none)
    weight_decay: float = 1e-2
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps even within an epoch
    val_every: int = 100
    val_fraction: float = 0.05
    val_data: str = ""  # a fixed validation set (work or dataset folder) instead of a split of DATA
    max_pos_per_identity: int | None = None  # cap on real-real pairs per identity (None: all C(n,2), as the recipe)
    fake_fraction: float = 0.25  # share of training pairs that are own-deepfake pairs (0..0.5; same-person stay 0.5)
    distill: float = 0.0  # weight of mean(1 - cos(embedding, the initial model's)) over a batch's real photos (0: off)
    margin_s: float = 64.0
    margin_base: float = 0.35
    margin_alpha: float = 0.1
    adaface_m: float = 0.4
    adaface_h: float = 0.333
    adaface_s: float = 64.0
    lr_factor: float = 0.5
    lr_patience: int = 10
    lr_threshold: float = 1e-4
    accuracy_threshold: float = 0.2
    keep_best: int = 5
    grad_clip: float | None = None  # max gradient norm; None: no clipping
    precision: str = "auto"  # auto: bf16 (or fp16 + GradScaler) on CUDA, fp32 on CPU
    flip: bool = False  # random horizontal flips (drawn from the seed, so resuming replays them)
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    log: str = "none"  # also log to Weights & Biases or TensorBoard (when installed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _hints() -> dict[str, typing.Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: typing.Any, hint: typing.Any, where: str) -> typing.Any:
    """Turn a file or CLI value into the field's type; strings such as "5e-6" from YAML are accepted for numbers."""
    args = typing.get_args(hint)
    optional = (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{where}: {name} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be {getattr(base, '__name__', base)}, got {value!r}") from None


def _check(cfg: TrainConfig) -> TrainConfig:
    for name, allowed in CHOICES.items():
        value = getattr(cfg, name)
        if value is not None and value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    positive = ("batch_size", "lr", "epochs", "val_every", "margin_s", "adaface_s", "keep_best", "lr_patience")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")
    for name in ("max_steps", "max_pos_per_identity", "grad_clip"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive (or none), got {getattr(cfg, name)}")
    if cfg.objective == "pair" and cfg.batch_size < 2:
        raise ConfigError("batch_size must be at least 2 (batch norm needs more than one image)")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    if not 0.0 < cfg.lr_factor < 1.0:
        raise ConfigError(f"lr_factor must be between 0 and 1, got {cfg.lr_factor}")
    if cfg.weight_decay < 0 or cfg.workers < 0 or cfg.lr_threshold < 0 or cfg.warmup_steps < 0 or cfg.distill < 0:
        raise ConfigError("weight_decay, workers, lr_threshold, warmup_steps and distill cannot be negative")
    if not 0.0 <= cfg.fake_fraction <= 0.5:
        raise ConfigError(f"fake_fraction must be between 0 and 0.5 (same-person pairs are half), got {cfg.fake_fraction}")
    try:
        parse_trainable(cfg.trainable)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def load_config_file(path: str | Path) -> dict[str, typing.Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file into a flat dict of known option names.

    Unknown keys are an error naming the closest option, because a typo silently ignored is a wasted GPU day.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from exc
    try:
        if path.suffix.lower() == ".toml":
            values = tomllib.loads(raw.decode("utf-8"))
        elif path.suffix.lower() in (".yaml", ".yml", ".json"):
            values = yaml.safe_load(raw.decode("utf-8"))  # YAML reads JSON too
        else:
            raise ConfigError(f"{path}: unknown config format (use .toml, .yaml or .yml)")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()} ({exc})") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    known = set(_hints())
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{path}: unknown option {key!r}{hint}")
        out[name] = _coerce(name, value, _hints()[name], str(path))
    return out


def load_config(name_or_file: str) -> dict[str, typing.Any]:
    """The values of `--config`: a preset of curation.training.presets by name, or a TOML / YAML file.

    A value with a config suffix (.toml, .yaml, .yml, .json) or a folder in it is a file; anything else is a preset
    name, and an unknown one is an error listing the presets.

    Example:
        >>> load_config("finetune-pretrained")["distill"]
        50.0
    """
    path = Path(name_or_file)
    if path.suffix.lower() in (".toml", ".yaml", ".yml", ".json") or len(path.parts) > 1:
        return load_config_file(path)
    if name_or_file not in PRESETS:
        raise ConfigError(f"--config {name_or_file}: no such preset (presets: {', '.join(PRESETS)}; or a .toml / "
                          ".yaml file)")
    hints = _hints()
    where = f"preset {name_or_file}"
    unknown = [k for k in PRESETS[name_or_file] if k not in hints]
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r}")
    return {k: _coerce(k, v, hints[k], where) for k, v in PRESETS[name_or_file].items()}


def resolve_config(
    *, base: dict[str, typing.Any] | None = None, file_values: dict | None = None, cli_values: dict | None = None
) -> TrainConfig:
    """Defaults, then `base` (a saved run's config.json on resume), then the file, then explicit CLI flags.

    Example:
        >>> resolve_config(cli_values={"lr": "1e-5"}).lr
        1e-05
    """
    hints = _hints()
    merged = TrainConfig().to_dict()
    for where, layer in (("saved config", base), ("config file", file_values), ("command line", cli_values)):
        for name, value in (layer or {}).items():
            if name not in hints:
                raise ConfigError(f"{where}: unknown option {name!r}")
            merged[name] = _coerce(name, value, hints[name], where)
    return _check(TrainConfig(**merged))
