"""Reading IR backbone weights from the files people actually have, and writing this project's own.

Why one loader for every format: a user hands the tool "a checkpoint" (the official AdaFace Lightning `.ckpt`, a CVLFace
`model.pt` or `model.safetensors`, a bare state_dict, or a run of ours) and expects it to work, or to be told in one
sentence why not. The depth is read from the keys (how many `body.N` units), never trusted from a file name: a published
CVLFace "ir101" file is known to hold IR-50 weights.

Safety: pickles are only ever read with `torch.load(..., weights_only=True)`. Training frameworks store bookkeeping
classes next to the weights (Lightning's hyper-parameter dict, argparse.Namespace, callback classes); those few are
replaced by inert placeholders of ours (no foreign code runs, whatever the name claims), and anything else a file would
need to call (os.system, eval, a model class) is refused with an explanation.

Formats read (keys after the prefix equal AdaFace's `net.py` names):
    AdaFace Lightning .ckpt   {"state_dict": {"model.<key>": ..., "head.kernel": ...}, "epoch": ..., ...}
    CVLFace model.pt          {"net.<key>": ...} (or that inside {"state_dict": ...})
    CVLFace model.safetensors {"model.net.<key>": ...}
    bare state_dict           {"<key>": ...} (also "module.<key>" from DataParallel)
    this project's format     {"format": FORMAT_TAG, "arch": "ir_101", "state_dict": {...}, "meta": {...}}

Example:
    >>> model = load_backbone("adaface_ir101_webface12m.ckpt")           # eval mode, depth read from the keys
    >>> save_backbone(model, "run/last.pt", step=1200, eer=0.031)
    >>> read_checkpoint("run/last.pt").meta
    {'step': 1200, 'eer': 0.031}
"""
from __future__ import annotations

import pickle
import pickletools
import re
import struct
import warnings
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from embeddings.backbones import ARCHS, STAGE_UNITS, UNITS_TO_ARCH, Backbone, build_backbone
from labels.cli import UserError
from labels.files import atomic_write

FORMAT_TAG = "facecur-backbone-v1"
# The `arch` of this project's format for the weights of a fine-tuned ONNX embedder (embeddings.onnx_backbone): a
# state_dict of the module built from the run's init.onnx, not an IR backbone, so only that module loads it.
ONNX_ARCH = "onnx"
_ANCHOR = "input_layer.0.weight"  # every IR backbone has it; what precedes it in a key is the prefix to strip
_KNOWN_PREFIXES = ("", "model.", "net.", "model.net.", "module.", "model.module.")
# Bookkeeping classes that training frameworks pickle beside the weights. They are replaced by `_Unloaded`, never
# imported or called; any other class or function a file needs makes the load fail with an explanation.
_BOOKKEEPING = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "argparse.Namespace", "pathlib.")
_MAX_PLACEHOLDER_ROUNDS = 32
# How a file is described in `BackboneCheckpoint.source`, by container and key prefix.
_SOURCES = {
    ("torch", "model."): "adaface-ckpt",
    ("torch", "net."): "cvlface-pt",
    ("safetensors", "model.net."): "cvlface-safetensors",
}


class CheckpointError(UserError):
    """A file that cannot give the backbone asked for; the message names the file and the reason in plain words."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class BackboneCheckpoint:
    """What a checkpoint file holds, once read: the backbone weights (keys as in `net.py`) and what came with them."""

    path: Path
    arch: str
    source: str  # adaface-ckpt | cvlface-pt | cvlface-safetensors | facecur | "<torch|safetensors> state_dict"
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. ignored keys, bookkeeping classes not loaded


class _Unloaded:
    """Placeholder for a bookkeeping class: it becomes an empty OrderedDict, so building it runs none of its code.

    `__new__` returning an OrderedDict lets torch's weights-only unpickler fill it (SETITEMS, BUILD) like the dict-like
    objects these classes are; the content is discarded anyway.
    """

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def read_checkpoint(path: str | Path, arch: str | None = None) -> BackboneCheckpoint:
    """Read the backbone weights in `path` and check they make a whole IR backbone of the expected depth.

    Inputs: `path` to any format listed in the module doc; `arch` (ir_18|ir_34|ir_50|ir_101) if the caller needs a
    particular depth, None to take whatever the file holds.
    Output: a `BackboneCheckpoint` whose `state_dict` loads strictly into `build_backbone(result.arch)`; for a
    fine-tuned ONNX embedder's weights (arch "onnx", see save_backbone) into the module built from its ONNX file.
    Raises `CheckpointError` (file name + reason) for a missing, empty, truncated or corrupt file, a file that is not an
    IR backbone, a pickle that would run code, a depth other than `arch`, or missing / unexpected / misshapen keys.

    Example:
        >>> ckpt = read_checkpoint("model.safetensors")
        >>> ckpt.arch, ckpt.source
        ('ir_101', 'cvlface-safetensors')
    """
    path = Path(path)
    if arch is not None and arch not in STAGE_UNITS:
        raise CheckpointError(path, f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    obj, kind, notes = _read_file(path)
    weights, meta, own = _unwrap(path, obj, kind)
    if own and obj.get("arch") == ONNX_ARCH:  # a fine-tuned ONNX embedder's weights: no IR layout to check
        if arch is not None:
            raise CheckpointError(path, f"holds a fine-tuned ONNX embedder's weights, not an IR backbone ({arch})")
        return BackboneCheckpoint(path, ONNX_ARCH, "facecur", dict(weights), meta, notes)
    prefix = _find_prefix(path, weights)
    state_dict = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    ignored = [k for k in weights if not k.startswith(prefix)]
    if ignored:
        notes.append(f"ignored {_n(len(ignored), 'key')} outside the backbone ({_summarise_keys(ignored)})")
    source = "facecur" if own else _SOURCES.get((kind, prefix), f"{kind} state_dict")
    found = _arch_from_keys(path, state_dict)
    if arch is not None and arch != found:
        raise CheckpointError(
            path,
            f"this file holds {_pretty(found)} weights ({sum(STAGE_UNITS[found])} units), you asked for {arch} "
            f"(files are sometimes named for the wrong depth; drop --arch or pass --arch {found})",
        )
    _check_keys(path, found, state_dict)
    return BackboneCheckpoint(path, found, source, state_dict, meta, notes)


def load_backbone(path: str | Path, arch: str | None = None, map_location: str | torch.device = "cpu") -> Backbone:
    """The IR backbone stored in `path`, weights loaded strictly, in eval mode, on `map_location`.

    Inputs: `path` (AdaFace .ckpt, CVLFace model.pt / model.safetensors, a bare state_dict, or `save_backbone` output);
    `arch` to insist on a depth (None: read it from the keys); `map_location` the device of the returned model.
    Output: a `Backbone`; `model.arch` says which depth it is. Raises `CheckpointError` (see `read_checkpoint`).

    Example:
        >>> model = load_backbone("adaface_ir101_webface12m.ckpt")
        >>> unit, norm = model(to_input(crops, "adaface"))
    """
    ckpt = read_checkpoint(path, arch)
    if ckpt.arch == ONNX_ARCH:
        raise CheckpointError(
            path, "holds the weights of a fine-tuned ONNX embedder, not an IR backbone: use the ONNX file its run "
            "wrote beside it (--model onnx:RUN/best.onnx), or continue the run with --resume")
    # Built on the meta device and allocated uninitialised: every tensor is overwritten by the strict load anyway,
    # and the random initialisation of an IR-101 costs seconds.
    with torch.device("meta"):
        model = build_backbone(ckpt.arch)
    model = model.to_empty(device="cpu")
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval().to(map_location)


def save_backbone(model: nn.Module, path: str | Path, **meta) -> Path:
    """Write `model`'s weights in this project's format, atomically (temp file beside `path`, fsync, rename).

    Inputs: an IR `Backbone` (its depth is read from its keys) or an `embeddings.onnx_backbone.OnnxBackbone` (arch
    "onnx": its state_dict as it is, which only a module built from the same ONNX file loads), the destination, and plain metadata (numbers, strings,
    lists, dicts, None; e.g. step=1200, eer=0.031) that `read_checkpoint(path).meta` gives back.
    Output: the path written. A kill at any moment leaves either the old file or the new one, never half a file.

    Example:
        >>> save_backbone(model, "run/best.pt", step=1200, eer=0.031)
    """
    path = Path(path)
    _check_plain(meta, "meta")
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    model = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    state_dict = OrderedDict((k, v.detach().to("cpu", copy=True)) for k, v in model.state_dict().items())
    arch = ONNX_ARCH if getattr(model, "arch", None) == ONNX_ARCH else _arch_from_keys(path, state_dict)
    payload = {"format": FORMAT_TAG, "arch": arch, "state_dict": state_dict, "meta": dict(meta)}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


# ---- reading the file ---------------------------------------------------------------------------------------------


def _read_file(path: Path) -> tuple[object, str, list[str]]:
    """(object in the file, 'safetensors' | 'torch', notes); every failure becomes a CheckpointError."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise CheckpointError(path, "empty file (0 bytes)")
    if _looks_like_safetensors(head, size):
        return _read_safetensors(path), "safetensors", []
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip, or a legacy pickle
        obj, placeholders = _torch_load(path, zip_format=head.startswith(b"PK"))
        notes = [f"not loaded (training bookkeeping, replaced by placeholders): {', '.join(sorted(placeholders))}"]
        return obj, "torch", notes if placeholders else []
    raise CheckpointError(
        path, "not a checkpoint: neither a PyTorch file (torch.save / Lightning .ckpt) nor a safetensors file"
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"truncated or corrupt safetensors file ({_first_line(exc)})") from exc


def _torch_load(path: Path, zip_format: bool) -> tuple[object, list[str]]:
    """torch.load with weights_only=True; known bookkeeping classes become placeholders, anything else is refused.

    mmap for zip files: an AdaFace .ckpt carries a classification head and optimizer state several times the size of
    the backbone; mapped, only the backbone's bytes are ever read.
    """
    placeholders: list[str] = []
    for _ in range(_MAX_PLACEHOLDER_ROUNDS):
        try:
            with warnings.catch_warnings(), torch.serialization.safe_globals([(_Unloaded, n) for n in placeholders]):
                warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols: noise for a user
                return torch.load(path, map_location="cpu", weights_only=True, mmap=zip_format), placeholders
        except pickle.UnpicklingError as exc:
            name = _unsupported_global(exc)
            if name is None:
                reason = f"truncated, corrupt or not a plain checkpoint ({_pickle_reason(exc)})"
                raise CheckpointError(path, reason) from None
            if not name.startswith(_BOOKKEEPING) or name in placeholders:
                raise CheckpointError(path, _refusal(f"it calls {name}")) from None
            placeholders.append(name)
        except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError, ... for damaged files
            if "TorchScript" in str(exc):
                reason = ("a TorchScript archive (torch.jit.save), not a checkpoint: save its weights with "
                          "torch.save(torch.jit.load(f).state_dict(), 'weights.pt')")
                raise CheckpointError(path, reason) from None
            raise CheckpointError(path, f"truncated or corrupt ({_first_line(exc)})") from exc
    raise CheckpointError(path, _refusal(f"needs more than {_MAX_PLACEHOLDER_ROUNDS} Python classes"))


def _unsupported_global(exc: Exception) -> str | None:
    """The 'module.name' torch's weights-only unpickler refused (not allowlisted, or a blocked module like posix)."""
    pattern = r"Unsupported global: GLOBAL (\S+) was not an allowed global|unsupported GLOBAL (\S+) whose module"
    m = re.search(pattern, str(exc))
    if not m:
        return None
    name = m.group(1) or m.group(2)
    return name if "." in name else f"builtins.{name}"


def _pickle_reason(exc: Exception) -> str:
    """The unpickler's own reason, without torch's long advice about weights_only=False (which we never take)."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(exc), re.S)
    reason = m.group(1).strip() if m else _first_line(exc)
    if op := re.fullmatch(r"Unsupported operand (\d+)", reason):
        code = pickletools.code2op.get(chr(int(op.group(1))))
        reason = f"pickle opcode {code.name if code else op.group(1)} is not allowed in a weights-only load"
    return reason


def _refusal(what: str) -> str:
    return (
        f"refused: loading this pickle would run Python code ({what}), which this tool never does with a file it is "
        "handed (torch.load weights_only=True). If you trust the file, load it yourself and save only the weights "
        "(torch.save(model.state_dict(), 'weights.pt') for a pickled model, or the checkpoint's 'state_dict' entry), "
        "then pass that file"
    )


# ---- finding the backbone in what was read ----------------------------------------------------------------------


def _unwrap(path: Path, obj: object, kind: str) -> tuple[Mapping[str, torch.Tensor], dict, bool]:
    """(flat mapping of weights, meta, whether it is this project's format) from the object a file held."""
    if kind == "safetensors":
        return obj, {}, False  # type: ignore[return-value]
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"not a backbone checkpoint: it holds a {type(obj).__name__}, not a dict of "
                                    "weights")
    if obj.get("format") == FORMAT_TAG:
        meta = obj.get("meta")
        return _tensor_mapping(path, obj.get("state_dict")), dict(meta) if isinstance(meta, Mapping) else {}, True
    inner = obj.get("state_dict")
    if isinstance(inner, Mapping):
        return _tensor_mapping(path, inner), {}, False
    if {"state", "param_groups"} <= set(obj):
        raise CheckpointError(path, "not a backbone: it is an optimizer state ('state', 'param_groups'), not weights")
    return _tensor_mapping(path, obj), {}, False


def _tensor_mapping(path: Path, obj: object) -> Mapping[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"not a backbone checkpoint: its state_dict is a {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(repr(k) for k in list(obj)[:5]) or "nothing"
        raise CheckpointError(path, f"not a backbone checkpoint: no weights in it (it holds {keys})")
    return tensors


def _find_prefix(path: Path, weights: Mapping[str, torch.Tensor]) -> str:
    prefixes = [k[: -len(_ANCHOR)] for k in weights if k.endswith(_ANCHOR)]
    prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
    if not prefixes:
        raise CheckpointError(
            path,
            f"not an IR backbone: none of its {len(weights)} tensors is an IR input layer ('{_ANCHOR}'); it holds "
            f"weights of another network ({_summarise_keys(list(weights))})",
        )
    if len(prefixes) > 1:
        for known in _KNOWN_PREFIXES:
            if known in prefixes:
                return known
        raise CheckpointError(path, f"holds several backbones (prefixes {', '.join(map(repr, prefixes))}); "
                                    "save the one you want on its own")
    return prefixes[0]


def _arch_from_keys(path: Path, state_dict: Mapping[str, torch.Tensor]) -> str:
    units = {int(m.group(1)) for k in state_dict if (m := re.match(r"body\.(\d+)\.", k))}
    n = len(units)
    if n not in UNITS_TO_ARCH or units != set(range(n)):
        known = ", ".join(f"{_pretty(a)} {sum(u)}" for a, u in STAGE_UNITS.items())
        raise CheckpointError(
            path, f"an IR-like network with {n} body units, which is none of the supported depths ({known} units)"
        )
    return UNITS_TO_ARCH[n]


def _check_keys(path: Path, arch: str, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Compare with the architecture's own state_dict (on the meta device: no memory, no init) and explain gaps."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_backbone(arch).state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{_n(len(missing), 'key')} the {arch} backbone needs missing ({_summarise_keys(missing)})")
    if unexpected:
        problems.append(f"{_n(len(unexpected), 'key')} not part of an {arch} backbone ({_summarise_keys(unexpected)})")
    if misshapen:
        k = misshapen[0]
        problems.append(
            f"{_n(len(misshapen), 'tensor')} of the wrong shape (e.g. {k} is {list(state_dict[k].shape)} in the file, "
            f"{arch} needs {list(expected[k])})"
        )
    if problems:
        raise CheckpointError(path, f"does not match the {arch} backbone: " + "; ".join(problems))


def _summarise_keys(keys: list[str], n: int = 3) -> str:
    """'body.*.res_layer.6.fc1.weight (24), ...': keys grouped with unit numbers replaced, so 900 keys fit one line."""
    groups = Counter(re.sub(r"^body\.\d+\.", "body.*.", k) for k in keys)
    shown = ", ".join(f"{g} ({c})" if c > 1 else g for g, c in groups.most_common(n))
    return shown + (f", and {len(groups) - n} more" if len(groups) > n else "")


def _check_plain(value: object, where: str) -> None:
    """Metadata must load back with weights_only=True: plain Python values and tensors only."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoint metadata must be plain values (numbers, str, "
                    "lists, dicts, None) so that it loads with weights_only=True")


def _pretty(arch: str) -> str:
    return arch.replace("ir_", "IR-")


def _first_line(exc: BaseException) -> str:
    """'RuntimeError: <first sentence>': enough to recognise the failure without torch's paragraphs of advice."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].split('. ')[0].rstrip('.')}" if text else type(exc).__name__


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
