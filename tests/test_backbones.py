"""IR backbones: key-for-key equality with the official AdaFace state_dicts, forward conventions, flip fusion."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from embeddings import build_backbone, flip_fused_embedding
from embeddings.backbones import ARCHS, UNITS_TO_ARCH


def _spec(spec_dir, arch: str) -> list[list]:
    return json.loads((spec_dir / f"adaface_{arch}_state_dict.json").read_text())["state_dict"]


def _keys_and_shapes(model) -> list[list]:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def test_ir_18_state_dict_equals_official_keys_shapes_and_order(spec_dir):
    assert _keys_and_shapes(build_backbone("ir_18")) == _spec(spec_dir, "ir_18")


def test_ir_101_state_dict_equals_official_and_parameter_count(spec_dir):
    with torch.device("meta"):  # same module code, no memory or random init: the check is about structure
        model = build_backbone("ir_101")
    assert _keys_and_shapes(model) == _spec(spec_dir, "ir_101")
    assert sum(p.numel() for p in model.parameters()) == 65_150_912


@pytest.mark.parametrize("arch, last_unit", [("ir_34", 15), ("ir_50", 23)])
def test_other_depths_have_the_documented_units(arch, last_unit):
    with torch.device("meta"):
        keys = build_backbone(arch).state_dict()
    units = {int(k.split(".")[1]) for k in keys if k.startswith("body.")}
    assert units == set(range(last_unit + 1))
    assert UNITS_TO_ARCH[last_unit + 1] == arch


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown backbone architecture 'ir_152'.*ir_18, ir_34, ir_50, ir_101"):
        build_backbone("ir_152")
    assert ARCHS == ("ir_18", "ir_34", "ir_50", "ir_101")


@pytest.fixture(scope="module")
def ir18():
    torch.manual_seed(0)
    return build_backbone("ir_18").eval()


def test_forward_returns_unit_embedding_and_norm_like_adaface(ir18):
    x = torch.randn(2, 3, 112, 112)
    with torch.inference_mode():
        unit, norm = ir18(x)
        raw = ir18.raw_embedding(x)
    assert unit.shape == (2, 512) and norm.shape == (2, 1)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(norm[:, 0], raw.norm(dim=1))
    torch.testing.assert_close(unit * norm, raw, rtol=1e-5, atol=1e-4)


def test_flip_fusion_is_normalised_sum_of_image_and_mirror(ir18):
    x = torch.randn(1, 3, 112, 112)
    with torch.inference_mode():
        unit, norm = flip_fused_embedding(ir18, x)
        raw = ir18.raw_embedding(x) + ir18.raw_embedding(torch.flip(x, dims=[3]))
        symmetric = torch.cat([x[..., :56], x[..., :56].flip(3)], dim=3)  # a mirror-symmetric image
        plain_sym, _ = ir18(symmetric)
        fused_sym, _ = flip_fused_embedding(ir18, symmetric)
    torch.testing.assert_close(unit, F.normalize(raw, dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm[:, 0], (raw / 2).norm(dim=1), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(fused_sym, plain_sym, rtol=1e-5, atol=1e-5)
