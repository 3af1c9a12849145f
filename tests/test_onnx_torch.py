"""embeddings.onnx_torch: ONNX embedders as trainable torch modules, checked against onnxruntime on real crops."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from embeddings.onnx_torch import OnnxConversionError, load_onnx_module
from tests.conftest import shared_path


def _normed(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0] == 1
    if fixed:
        return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    return sess.run(None, {name: x})[0]


@pytest.fixture(scope="module")
def crops(glint_dir) -> np.ndarray:
    """32 real aligned 112x112 crops in MobileFaceNet's convention: RGB, (x - 127.5) / 128, NCHW."""
    from embeddings.onnx_export import read_check_crops

    rgb, _ = read_check_crops(glint_dir, 32)
    assert rgb.shape == (32, 112, 112, 3)
    return np.ascontiguousarray(((rgb.astype(np.float32) - 127.5) / 128.0).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def mobilefacenet(models_dir):
    return models_dir / "mobilefacenet.onnx"


@pytest.mark.parametrize("batch", [1, 32])
def test_mobilefacenet_matches_onnxruntime_at_any_batch(mobilefacenet, crops, batch):
    # The shared file is exported with a fixed batch of 1 (Reshape to [1, -1]); the module runs any batch.
    module = load_onnx_module(mobilefacenet)
    x = crops[:batch]
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    ref = _ort(mobilefacenet, x)
    assert ours.shape == ref.shape == (batch, 128)
    assert np.abs(_normed(ours) - _normed(ref)).max() <= 1e-4
    # and the embeddings are real: two different people are not the same vector
    if batch > 1:
        assert (_normed(ours) @ _normed(ours).T)[np.triu_indices(batch, 1)].min() < 0.9


def test_every_weight_is_trainable_and_a_step_moves_the_embedding(mobilefacenet, crops):
    module = load_onnx_module(mobilefacenet).train()
    n_weights = sum(p.numel() for p in module.parameters())
    assert n_weights > 900_000  # the conv weights and biases of MobileFaceNet, not a frozen constant graph
    x = torch.from_numpy(crops[:8])
    start = torch.nn.functional.normalize(module(x), dim=1).detach()
    # pull every photo's embedding towards the first photo's: the loss must fall after a few SGD steps
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        emb = torch.nn.functional.normalize(module(x), dim=1)
        loss = 1 - (emb @ start[0]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in module.parameters())


def test_an_ir_backbone_exported_by_this_repo_converts_back_to_the_same_outputs(tmp_path, crops):
    from embeddings.backbones import build_backbone
    from embeddings.onnx_export import export_onnx

    torch.manual_seed(0)
    model = build_backbone("ir_18").eval()
    path = export_onnx(model, tmp_path / "ir18.onnx")
    module = load_onnx_module(path)
    x = torch.from_numpy(crops[:4])
    with torch.no_grad():
        ours = module(x).numpy()
        want = model.raw_embedding(x).numpy()
    assert ours.shape == want.shape == (4, 512)
    assert np.abs(_normed(ours) - _normed(want)).max() <= 1e-4
    assert np.abs(_normed(ours) - _normed(_ort(path, crops[:4]))).max() <= 1e-4


def _bn_prelu_gemm_graph(path, rng) -> None:
    """Conv -> BatchNormalization -> PRelu -> MaxPool -> GlobalAveragePool -> Flatten -> Gemm, by hand."""
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(f(6, 3, 3, 3), "w"), numpy_helper.from_array(f(6), "b"),
        numpy_helper.from_array(np.abs(f(6)) + 0.5, "scale"), numpy_helper.from_array(f(6), "shift"),
        numpy_helper.from_array(f(6), "mean"), numpy_helper.from_array(np.abs(f(6)) + 0.5, "var"),
        numpy_helper.from_array(np.abs(f(6, 1, 1)) * 0.2, "slope"),
        numpy_helper.from_array(f(5, 6), "fc_w"), numpy_helper.from_array(f(5), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], name="bn", epsilon=1e-3),
        helper.make_node("PRelu", ["n", "slope"], ["p"], name="prelu"),
        helper.make_node("MaxPool", ["p"], ["mp"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["mp"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["fl"], name="flat", axis=1),
        helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["y"], name="fc", transB=1, alpha=0.5, beta=2.0),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_batchnorm_prelu_gemm_graph_matches_onnxruntime_and_bn_stats_are_buffers(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.onnx"
    _bn_prelu_gemm_graph(path, rng)
    module = load_onnx_module(path)
    x = rng.normal(size=(7, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _ort(path, x), atol=1e-5, rtol=1e-5)
    trainable = {name for name, _ in module.named_parameters()}
    assert {"mean", "var"}.isdisjoint(trainable) and {"w", "scale", "slope", "fc_w"} <= trainable
    # training mode uses batch statistics and updates the running ones, as BatchNorm2d does
    module.train()
    before = module.mean.clone()
    module(torch.from_numpy(x))
    assert not torch.equal(before, module.mean)


def test_an_unsupported_op_is_refused_with_its_node_and_op(tmp_path):
    nodes = [helper.make_node("Softplus", ["x"], ["y"], name="odd_activation")]
    graph = helper.make_graph(
        nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    with pytest.raises(OnnxConversionError, match=r"odd\.onnx.*node 'odd_activation'.*'Softplus' is not supported"):
        load_onnx_module(path)


def test_a_detector_is_refused_as_not_an_embedder():
    scrfd = shared_path("models", "scrfd_2.5g_bnkps.onnx")
    with pytest.raises(OnnxConversionError, match=r"scrfd_2\.5g_bnkps\.onnx: not a face embedder: it has 9 output"):
        load_onnx_module(scrfd)


def test_a_file_that_is_not_onnx_names_the_file(tmp_path):
    bad = tmp_path / "weights.onnx"
    bad.write_bytes(b"\x00not a protobuf at all" * 10)
    with pytest.raises(OnnxConversionError, match=r"weights\.onnx: not a readable ONNX model"):
        load_onnx_module(bad)


def test_same_padding_is_refused_when_the_file_is_read_not_when_it_first_runs(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="same_conv", auto_pad="SAME_UPPER")]
    graph = helper.make_graph(
        nodes, "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])], [w])
    path = tmp_path / "same.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    with pytest.raises(OnnxConversionError, match=r"same\.onnx: node 'same_conv' \(Conv\): auto_pad=SAME_UPPER"):
        load_onnx_module(path, require_embedder=False)


def test_cutting_the_graph_gives_the_same_embedding_and_the_tail_trains_alone(mobilefacenet, crops):
    # A frozen trunk computed once plus the trainable tail must be exactly the whole network, at every cut point.
    module = load_onnx_module(mobilefacenet)
    cuts = module.cut_points()
    assert "/features/features.12/conv/conv.2/Conv_output_0" in cuts  # between MobileFaceNet's 14x14 and 7x7 stages
    x = torch.from_numpy(crops[:4])
    with torch.no_grad():
        whole = module(x)
        for cut in (cuts[0], cuts[len(cuts) // 2], cuts[-2]):
            trunk = module.run_part(x, stop=cut)
            assert torch.equal(module.run_part(trunk, start=cut), whole)
    # inside a residual block the block's input is still needed by its Add: no cut there, but after the Add
    assert "/features/features.13/conv/conv.0/conv.0.0/Conv_output_0" not in cuts
    assert "/features/features.13/Add_output_0" in cuts
    # the parameters after the last stage's input are the 9 convolutions (weight + bias) of the 7x7 stage and head
    tail = module.parameters_after("/features/features.12/conv/conv.2/Conv_output_0")
    assert len(tail) == 18 and tail[-1] is list(module.parameters())[-1]
    assert module.layers_after("/features/features.12/conv/conv.2/Conv_output_0") == 9
    with pytest.raises(OnnxConversionError, match="no node"):
        module.run_part(x, start="nonexistent")
