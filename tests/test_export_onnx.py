"""`python -m curation.export_onnx`: parity with torch on real aligned crops, dynamic batch, metadata, CLI errors."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from curation.export_onnx import main
from embeddings import build_backbone, save_backbone
from embeddings.preprocess import ONNX_CONVENTION_KEY, to_input
from labels.imagefile import read_rgb


@pytest.fixture(scope="module")
def glint_crops(glint_dir) -> np.ndarray:
    """One aligned crop from each of 5 people (different faces, some with black warp borders)."""
    people = sorted(p for p in glint_dir.iterdir() if p.is_dir())[:5]
    return np.stack([read_rgb(sorted(p.glob("*.png"))[0]) for p in people])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, glint_dir):
    """A random-weight IR-18 saved as a checkpoint and exported once through the CLI (with its own parity check)."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = build_backbone("ir_18").eval()
    ckpt = save_backbone(model, folder / "ir18.pt")
    out = folder / "ir18.onnx"
    code = main([str(ckpt), "--out", str(out), "--check-images", str(glint_dir), "--max-images", "4"])
    return model, out, code


def test_cli_exports_and_reports_parity(exported, capsys):
    _, out, code = exported
    assert code == 0 and out.is_file()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_onnx_matches_torch_on_glint_crops_at_batch_5_and_1(exported, glint_crops):
    model, out, _ = exported
    x = to_input(glint_crops, "adaface")  # BGR, [-1, 1]: the convention the export records
    with torch.inference_mode():
        unit, norm = model(x)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # plain options: independent check
    for n in (5, 1):
        (features,) = session.run(["features"], {"input": x[:n].numpy()})
        assert features.shape == (n, 512)
        onnx_norm = np.linalg.norm(features, axis=1, keepdims=True)
        np.testing.assert_allclose(features / onnx_norm, unit[:n].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(onnx_norm, norm[:n].numpy(), rtol=1e-4)  # 'features' is the raw embedding
    assert float((unit @ unit.T).min()) < 0.99  # the crops really are different inputs


def test_onnx_graph_names_dynamic_batch_and_metadata(exported):
    _, out, _ = exported
    proto = onnx.load(str(out), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[ONNX_CONVENTION_KEY] == "adaface"
    assert meta["embedding_arch"] == "ir_18" and meta["features"] == "raw" and meta["source_checkpoint"] == "ir18.pt"
    (inp,) = proto.graph.input
    (outp,) = proto.graph.output
    assert (inp.name, outp.name) == ("input", "features")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 112, 112]


def test_cli_bad_checkpoint_is_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "not_a_model.ckpt"
    bad.write_bytes(b"hello, not weights")
    assert main([str(bad), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(bad) in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_cli_check_images_must_be_aligned_crops(tmp_path, lfw_dir, capsys):
    person = sorted(p for p in lfw_dir.iterdir() if p.is_dir())[0]  # 150x150 unaligned photos
    assert main([str(tmp_path / "unused.pt"), "--out", str(tmp_path / "x.onnx"), "--check-images", str(person)]) == 2
    assert "no aligned 112x112 crops found" in capsys.readouterr().err


def test_cli_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "examples:" in capsys.readouterr().out


class _TinyEmbedder(torch.nn.Module):
    """Anything with `raw_embedding` exports; BatchNorm shows whether the export ran it in training mode."""

    arch = "tiny"

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3 * 8 * 8, 4)

    def raw_embedding(self, x):
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(self.bn(x), 8).flatten(1))


def test_export_leaves_the_callers_model_untouched(tmp_path):
    from embeddings.onnx_export import export_onnx

    model = _TinyEmbedder().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "tiny.onnx")
    assert not model.training  # torch's exporter restores the mode of the module it was given, recursively
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    training = _TinyEmbedder().train()
    export_onnx(training, tmp_path / "tiny2.onnx")  # exported in eval mode from a copy; the original keeps training
    assert training.training and training.bn.num_batches_tracked.item() == 0
