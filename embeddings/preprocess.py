"""Input conventions of face embedders, in one place.

Why one place: the official AdaFace models expect BGR pixels scaled to [-1, 1]; feeding RGB silently costs accuracy (a
public challenge solution shipped exactly that bug). Every path into a backbone (embedding pass, training, ONNX export
parity check, evaluation) goes through `to_input`, so the convention cannot drift between them.

Crops arrive as RGB uint8 arrays of shape [N, 112, 112, 3] (or [112, 112, 3]), aligned to the ArcFace template.

Example:
    >>> x = to_input(crops, "adaface")        # float32 tensor [N, 3, 112, 112], BGR, ((x/255)-0.5)/0.5
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
