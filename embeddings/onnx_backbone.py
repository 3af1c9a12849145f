"""An ONNX face embedder as a backbone the fine-tuning loop trains, and its fine-tuned weights written back to ONNX.

Why: `python -m curation.train_on_clean --init onnx:FILE` fine-tunes a pretrained ONNX embedder (the only pretrained
weights many users have). The loop feeds every model `to_input(crops, "adaface")` and wants `(unit, norm)` back, as
from an IR backbone; `OnnxBackbone` wraps `embeddings.onnx_torch.OnnxModule` to do exactly that, converting the batch
to the file's own input convention at the start of its forward. The fine-tuned weights go back into a copy of the
source graph (same nodes, same input and output, the convention recorded in its metadata), so the result works as
`--model onnx:RUN/best.onnx` wherever `--model onnx:FILE` did; `export_onnx_backbone` checks onnxruntime against the
torch module on real crops before the file is kept.

Example:
    >>> model = load_onnx_backbone("mobilefacenet.onnx")          # input convention from the file (arcface_rgb)
    >>> unit, norm = model(to_input(crops, "adaface"))             # [N, 128], [N, 1]
    >>> export_onnx_backbone(model, "mobilefacenet.onnx", "tuned.onnx", crops).max_abs_diff   # ~1e-7
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from embeddings.backbones import INPUT_SIZE, split_norm
from embeddings.checkpoints import ONNX_ARCH
from embeddings.onnx_export import PARITY_GOAL, Parity
from embeddings.onnx_torch import OnnxConversionError, OnnxModule, load_onnx_module
from embeddings.preprocess import ONNX_CONVENTION_KEY, convert, onnx_convention, to_input
from labels.files import file_sha256

# insightface SCRFD detectors with keypoints have score, box and keypoint maps for 3 strides (x2 anchors) or 5.
SCRFD_OUTPUTS = (9, 15)
MIN_DIM = 16  # fewer numbers per face than this is not an embedder (as for the `onnx:` embedder)


class OnnxParityError(OnnxConversionError):
    """The written ONNX file does not compute what the torch module computes (the file is not kept)."""


class OnnxBackbone(nn.Module):
    """An ONNX embedder behaving as an IR backbone: adaface-convention input, `(unit, norm)` output.

    `net` is the trainable graph, `convention` the input convention the ONNX file expects (the exported file keeps it),
    `source_sha256` the hash of the file it was built from (a checkpoint of this module loads only into a module built
    from the same file). `arch` is "onnx" (embeddings.checkpoints.ONNX_ARCH), which `save_backbone` records;
    `embedding_size` the output size D (what an AdaFace head over it needs), measured by `load_onnx_backbone`.
    """

    arch = ONNX_ARCH
    embedding_size: int | None = None

    def __init__(self, net: OnnxModule, convention: str, source_sha256: str):
        super().__init__()
        self.net = net
        self.convention = convention
        self.source_sha256 = source_sha256

    def raw_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, 112, 112] in the adaface convention -> the graph's raw output [N, D]."""
        return self.net(convert(x, "adaface", self.convention))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit embedding [N, D], norm [N, 1]), as an IR backbone's forward."""
        return split_norm(self.raw_embedding(x))


def load_onnx_backbone(path: str | Path, convention: str | None = None) -> OnnxBackbone:
    """The ONNX embedder in `path` as a trainable `OnnxBackbone` (eval mode, float32, CPU).

    Inputs: the ONNX file; its input convention (a key of `embeddings.preprocess.CONVENTIONS`), None to read it from
    the file's metadata as the `onnx:` embedder does (default arcface_rgb). Raises OnnxConversionError (a UserError)
    naming the file and the reason: missing, not ONNX, an op the converter lacks, not an embedder (a detector such as
    SCRFD), or a graph that does not run on a batch of 112x112 crops.

    Example:
        >>> load_onnx_backbone("mobilefacenet.onnx").convention
        'arcface_rgb'
    """
    path = Path(path)
    if not path.is_file():
        raise OnnxConversionError(f"{path}: {'is a folder, not' if path.is_dir() else 'no such file: expected'} an "
                                  "ONNX embedder file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX: load_onnx_module below says so, with the parser's reason
        proto = None
    if proto is not None and len(proto.graph.output) in SCRFD_OUTPUTS:
        raise OnnxConversionError(
            f"{path}: a face detector, not an embedder: its {len(proto.graph.output)} outputs are the score, box and "
            "keypoint maps of an insightface SCRFD detector, while fine-tuning needs an embedder (one [N, D] output "
            "per aligned 112x112 crop); use this file as --detector scrfd:FILE")
    net = load_onnx_module(path, require_embedder=True)
    metadata = {p.key: p.value for p in proto.metadata_props}
    model = OnnxBackbone(net, onnx_convention(metadata, str(path), convention), file_sha256(path)).eval()
    try:  # one probe at batch 2: a graph that cannot run a crop batch fails here, in one line, not mid-training
        with torch.no_grad():
            unit, _ = model(torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE))
    except OnnxConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the graph on a crop batch is the file's, said in a line
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise OnnxConversionError(f"{path}: does not run on a batch of {INPUT_SIZE}x{INPUT_SIZE} crops ({reason})") \
            from exc
    if unit.dim() != 2 or unit.shape[0] != 2 or unit.shape[1] < MIN_DIM:
        raise OnnxConversionError(f"{path}: gives an output shaped {list(unit.shape)} for 2 crops; not a face "
                                  f"embedder ([N, D] with D >= {MIN_DIM})")
    model.embedding_size = int(unit.shape[1])
    return model


def write_onnx_backbone(model: OnnxBackbone, source: str | Path, out: str | Path, meta: dict | None = None) -> Path:
    """Write `model`'s current weights into a copy of the graph in `source` (the file it was built from) at `out`.

    Every initializer the module holds (weights, biases, batch-norm statistics) takes the module's value; nodes,
    inputs and outputs are the source's, so the file runs exactly where the source ran. The metadata records the input
    convention (embeddings.preprocess.ONNX_CONVENTION_KEY, read by the `onnx:` embedder) and `meta` (str values).
    Not atomic by itself: callers write to a temporary path (see export_onnx_backbone).
    """
    proto = onnx.load(str(source))
    values = model.net.onnx_tensors()
    for init in proto.graph.initializer:
        if init.name in values:  # same dtype and shape as the source's: the module was built from these tensors
            init.CopyFrom(numpy_helper.from_array(values[init.name].detach().cpu().numpy(), init.name))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({ONNX_CONVENTION_KEY: model.convention, **{k: str(v) for k, v in (meta or {}).items()}})
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return Path(out)


def onnx_parity(model: OnnxBackbone, path: str | Path, crops: np.ndarray) -> Parity:
    """How far `--model onnx:PATH` (the `onnx:` embedder on onnxruntime, reading the convention from the file) is from
    the torch module on `crops` (RGB uint8 [N, 112, 112, 3]): max |difference| of the unit embeddings, whole batch and
    the first crop alone."""
    from embeddings.embedders import make_embedder

    embedder = make_embedder(f"onnx:{path}", device="cpu")
    net = model
    if model.training or next(model.parameters()).device.type != "cpu":
        # a CPU copy in eval mode: the caller's model (maybe training on a GPU) is left as it is
        net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    with torch.no_grad():
        expected, _ = net(to_input(crops, "adaface"))
    diff = 0.0
    sizes = (len(crops), 1) if len(crops) > 1 else (1,)
    for n in sizes:
        got, _ = embedder.embed(crops[:n])
        diff = max(diff, float(np.abs(got - expected[:n].numpy()).max()))
    return Parity(diff, len(crops), sizes)


def export_onnx_backbone(
    model: OnnxBackbone, source: str | Path, out: str | Path, crops: np.ndarray, meta: dict | None = None
) -> Parity:
    """`write_onnx_backbone` to `out`, then `onnx_parity` on `crops`; OnnxParityError when it exceeds PARITY_GOAL.

    Call it inside `labels.files.atomic_write` (out = the temporary path), so a file that fails the check is never
    renamed into place.

    Example:
        >>> atomic_write("RUN/best.onnx", lambda tmp: export_onnx_backbone(model, "RUN/init.onnx", tmp, crops))
    """
    write_onnx_backbone(model, source, out, meta)
    parity = onnx_parity(model, out, crops)
    if not parity.max_abs_diff <= PARITY_GOAL:
        raise OnnxParityError(
            f"{out}: onnxruntime differs from the fine-tuned torch module by {parity.max_abs_diff:.2e} (max |diff| of "
            f"unit embeddings on {parity.n_images} crops; the goal is <= {PARITY_GOAL:g}); the file is not kept")
    return parity
