"""Input conventions of face embedders, in one place.

Why one place: the official AdaFace models expect BGR pixels scaled to [-1, 1]; feeding RGB silently costs accuracy (a
public challenge solution shipped exactly that bug). Every path into a backbone (embedding pass, training, ONNX export
parity check, evaluation) goes through `to_input`, so the convention cannot drift between them.

Crops arrive as RGB uint8 arrays of shape [N, 112, 112, 3] (or [112, 112, 3]), aligned to the ArcFace template.

Example:
    >>> x = to_input(crops, "adaface")        # float32 tensor [N, 3, 112, 112], BGR, ((x/255)-0.5)/0.5
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from labels.cli import UserError


@dataclass(frozen=True)
class Convention:
    """How pixels are laid out and scaled before they reach a model."""

    bgr: bool
    mean: float
    std: float


CONVENTIONS: dict[str, Convention] = {
    # Official AdaFace / CVLFace IR backbones: BGR, ((x / 255) - 0.5) / 0.5 == (x - 127.5) / 127.5.
    "adaface": Convention(bgr=True, mean=127.5, std=127.5),
    # insightface-style ArcFace / MobileFaceNet ONNX models: RGB, (x - 127.5) / 128.
    "arcface_rgb": Convention(bgr=False, mean=127.5, std=128.0),
}

# Key under which `curation.export_onnx` records the convention in an ONNX model's metadata, so that the `onnx:`
# embedder feeds an exported model correctly without the user having to say how.
ONNX_CONVENTION_KEY = "input_convention"
# What an ONNX file without that key is taken to expect: the insightface family's (ArcFace, MobileFaceNet) convention.
ONNX_DEFAULT_CONVENTION = "arcface_rgb"


class ConventionError(UserError):
    """An input convention that is not one of CONVENTIONS (named in a file's metadata or on the command line)."""


def to_input(crops: np.ndarray | torch.Tensor, convention: str = "adaface") -> torch.Tensor:
    """RGB uint8 crops [N,112,112,3] (or one crop) -> float32 NCHW tensor in the named convention."""
    conv = CONVENTIONS[convention]
    x = torch.as_tensor(crops)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB crops shaped [N, H, W, 3], got {tuple(x.shape)}")
    if conv.bgr:
        x = x.flip(-1)
    x = x.permute(0, 3, 1, 2).float()
    return ((x - conv.mean) / conv.std).contiguous()


def onnx_convention(metadata: Mapping[str, str], where: str, override: str | None = None) -> str:
    """The input convention of an ONNX embedder: `override` when given, else its metadata's ONNX_CONVENTION_KEY, else
    ONNX_DEFAULT_CONVENTION. The one reading of it, shared by the `onnx:` embedder and fine-tuning from an ONNX file.

    Inputs: the model's metadata_props as a mapping, the file (for the message), an explicit convention or None.
    Raises ConventionError naming the file (or the option) when the convention is not a known one.

    Example:
        >>> onnx_convention({}, "mobilefacenet.onnx")
        'arcface_rgb'
    """
    if override is not None:
        value, source = override, f"input convention {override!r}"
    else:
        value = metadata.get(ONNX_CONVENTION_KEY, ONNX_DEFAULT_CONVENTION)
        source = f"{where}: metadata {ONNX_CONVENTION_KEY}={value!r}"
    if value not in CONVENTIONS:
        raise ConventionError(f"{source} is not a known input convention ({', '.join(CONVENTIONS)})")
    return value


def convert(x: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """A model input [N, 3, H, W] in convention `src` -> the same pixels in convention `dst` (channel order, scale).

    Why: the training loop feeds every model `to_input(crops, "adaface")`; a fine-tuned ONNX embedder that expects
    another convention converts at the start of its forward, so the loop stays one code path and the exported model
    keeps the convention of the file it came from.

    Example:
        >>> torch.allclose(convert(to_input(crops, "adaface"), "adaface", "arcface_rgb"), to_input(crops, "arcface_rgb"))
        True
    """
    if src == dst:
        return x
    s, d = CONVENTIONS[src], CONVENTIONS[dst]
    if s.bgr != d.bgr:
        x = x.flip(1)
    return (x * s.std + (s.mean - d.mean)) / d.std
