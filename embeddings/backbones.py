"""IR-18/34/50/101 face backbones, module for module the AdaFace `net.py` family.

Why the exact naming: the official AdaFace checkpoints (and CVLFace's copies of them) must load strictly, key for key,
so a user's pretrained IR-101 drops in without any conversion. Attribute names, registration order (`input_layer`,
`output_layer`, then `body`) and layer indices therefore follow AdaFace's `net.py`; `state_dict()` equals
`../shared/spec/adaface_ir_*_state_dict.json` in keys, shapes and order (the tests check it).

Conventions:
- Input: float tensor [N, 3, 112, 112], BGR, ((x / 255) - 0.5) / 0.5, an ArcFace-template crop. Build it with
  `embeddings.preprocess.to_input(crops, "adaface")`, never by hand.
- `forward(x)` returns `(unit_embedding [N, 512], norm [N, 1])` exactly as AdaFace does: the raw 512-d output divided by
  its L2 norm, and that norm (kept 2-D, like AdaFace's `torch.norm(x, 2, 1, True)`; AdaFace uses it as an image-quality
  signal). `raw_embedding(x)` gives the vector before normalisation (what CVLFace's forward returns).

Example:
    >>> model = build_backbone("ir_18").eval()
    >>> unit, norm = model(to_input(crops, "adaface"))            # [N, 512], [N, 1]
    >>> unit, norm = flip_fused_embedding(model, to_input(crops))  # test-time flip augmentation
"""
from __future__ import annotations

import torch
from torch import nn

# Units per stage (channels 64, 128, 256, 512); the first unit of each stage has stride 2.
STAGE_UNITS: dict[str, tuple[int, int, int, int]] = {
    "ir_18": (2, 2, 2, 2),
    "ir_34": (3, 4, 6, 3),
    "ir_50": (3, 4, 14, 3),
    "ir_101": (3, 13, 30, 3),
}
ARCHS = tuple(STAGE_UNITS)
# Total `body.N` units per architecture: how a checkpoint's depth is read from its keys.
UNITS_TO_ARCH: dict[int, str] = {sum(units): arch for arch, units in STAGE_UNITS.items()}
EMBEDDING_SIZE = 512
INPUT_SIZE = 112


class BasicBlockIR(nn.Module):
    """One IR unit: BN-Conv-BN-PReLU-Conv-BN plus a shortcut (AdaFace's `BasicBlockIR`).

    The shortcut is registered before `res_layer`, as in AdaFace, so the state_dict order matches theirs.
    """

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class Backbone(nn.Module):
    """An IR backbone (AdaFace's `Backbone` in 'ir' mode). Build it with `build_backbone(arch)`."""

    def __init__(self, arch: str):
        super().__init__()
        self.arch = arch
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        # Registered before `body`, as in AdaFace: the state_dict lists output_layer.* before body.*.
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, EMBEDDING_SIZE),
            nn.BatchNorm1d(EMBEDDING_SIZE, affine=False),
        )
        units = []
        in_channel = 64
        for depth, n in zip((64, 128, 256, 512), STAGE_UNITS[arch]):
            for i in range(n):
                units.append(BasicBlockIR(in_channel, depth, 2 if i == 0 else 1))
                in_channel = depth
        self.body = nn.Sequential(*units)
        if not self.input_layer[0].weight.is_meta:  # on the meta device (structure only, or about to load) skip it
            _initialize_weights(self)

    def raw_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The 512-d output before L2 normalisation ([N, 512]); its norm is AdaFace's quality signal."""
        return self.output_layer(self.body(self.input_layer(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit embedding [N, 512], norm [N, 1]), as AdaFace's forward."""
        return split_norm(self.raw_embedding(x))


def split_norm(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """raw [N, D] -> (raw / ||raw||, ||raw|| as [N, 1]); the norm is clamped away from 0 only for the division."""
    norm = torch.linalg.vector_norm(raw, ord=2, dim=1, keepdim=True)
    return raw / norm.clamp_min(1e-12), norm


def _initialize_weights(model: nn.Module) -> None:
    """AdaFace's initialisation (Kaiming for conv/linear, BN at identity): what `--init random` trains from."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_backbone(arch: str) -> Backbone:
    """A randomly initialised IR backbone (training mode, like any fresh nn.Module).

    Input: `arch`, one of ir_18, ir_34, ir_50, ir_101. Output: a `Backbone` whose state_dict keys equal the official
    AdaFace ones; load weights with `embeddings.load_backbone(path)` rather than by hand.

    Example:
        >>> model = build_backbone("ir_101")
        >>> sum(p.numel() for p in model.parameters())
        65150912
    """
    if arch not in STAGE_UNITS:
        raise ValueError(f"unknown backbone architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    return Backbone(arch)


def flip_fused_embedding(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time flip fusion: normalise(f(x) + f(mirror(x))), the common trick that gains a little accuracy.

    Inputs: `model` returning (unit, norm) like `Backbone`; `x` [N, 3, H, W] already in the model's convention.
    Output: (unit embedding [N, D], norm [N, 1]) where norm is that of the mean of the two raw vectors, so it stays on
    the same scale as a single pass's norm (AdaFace's own fusion sums instead; the direction is identical).
    The image and its mirror go through the model as one batch of 2N.

    Example:
        >>> unit, norm = flip_fused_embedding(model, to_input(crops, "adaface"))
    """
    unit, norm = model(torch.cat([x, x.flip(3)]))
    raw = unit * norm
    n = x.shape[0]
    return split_norm((raw[:n] + raw[n:]) / 2)
