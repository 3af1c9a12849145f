"""An ONNX face embedder as a trainable torch module, so that any ArcFace-style ONNX model can be fine-tuned.

Why it is written here: the usual converters (onnx2torch, onnx2pytorch) import torchvision, and torchvision's compiled
ops cannot load beside the CPU build of torch this project installs ("operator torchvision::nms does not exist"). The
op set of CNN face embedders is small, so the graph is run node by node in eager torch: every float initializer becomes
an `nn.Parameter` (BatchNormalization's running statistics become buffers, updated in training mode), and shape
arithmetic (Shape/Gather/Unsqueeze/Concat) is computed on the fly, so graphs exported with a fixed batch of 1 run at
any batch size.

Example:
    >>> module = load_onnx_module("mobilefacenet.onnx")          # doctest: +SKIP
    >>> module(torch.zeros(4, 3, 112, 112)).shape                 # doctest: +SKIP
    torch.Size([4, 512])
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from labels.cli import UserError


class OnnxConversionError(UserError):
    """The ONNX file cannot become a trainable embedder (unsupported op, not an embedder, unreadable)."""


@dataclass(frozen=True)
class _Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


def _pair_pads(pads: list[int], dims: int) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] -> F.pad's order (last dim first, begin/end)."""
    out: list[int] = []
    for d in reversed(range(dims)):
        out += [pads[d], pads[d + dims]]
    return out


def _conv(m: "OnnxModule", n: _Node, x, w, b=None):
    dims = w.dim() - 2
    pads = list(n.attrs.get("pads", [0] * 2 * dims))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    symmetric = pads[:dims] == pads[dims:]
    if not symmetric:
        x = F.pad(x, _pair_pads(pads, dims))
    return conv(x, w, b, stride=n.attrs.get("strides", 1), padding=pads[:dims] if symmetric else 0,
                dilation=n.attrs.get("dilations", 1), groups=n.attrs.get("group", 1))


def _batchnorm(m: "OnnxModule", n: _Node, x, scale, bias, mean, var):
    # ONNX momentum weighs the running value; torch's weighs the batch value.
    return F.batch_norm(x, mean, var, scale, bias, training=m.training,
                        momentum=1.0 - n.attrs.get("momentum", 0.9), eps=n.attrs.get("epsilon", 1e-5))


def _pool(kind: str) -> Callable:
    def run(m: "OnnxModule", n: _Node, x):
        k = n.attrs["kernel_shape"]
        dims = len(k)
        pads = list(n.attrs.get("pads", [0] * 2 * dims))
        strides = n.attrs.get("strides", [1] * dims)
        ceil = bool(n.attrs.get("ceil_mode", 0))
        if pads[:dims] != pads[dims:]:
            x = F.pad(x, _pair_pads(pads, dims), value=-math.inf if kind == "max" else 0.0)
            pads = [0] * 2 * dims
        if kind == "max":
            return F.max_pool2d(x, k, strides, pads[:dims], ceil_mode=ceil)
        return F.avg_pool2d(x, k, strides, pads[:dims], ceil_mode=ceil,
                            count_include_pad=bool(n.attrs.get("count_include_pad", 0)))
    return run


def _reshape(m: "OnnxModule", n: _Node, x, shape):
    target = [int(v) for v in shape.tolist()]
    target = [x.shape[i] if v == 0 and not n.attrs.get("allowzero", 0) else v for i, v in enumerate(target)]
    # A graph exported with a fixed batch of 1 spells its batch as 1: it is the batch of whatever runs now.
    if target and target[0] == 1 and m.fixed_batch == 1 and x.shape[0] != 1:
        target[0] = x.shape[0]
    return x.reshape(target)


def _gemm(m: "OnnxModule", n: _Node, a, b, c=None):
    a = a.t() if n.attrs.get("transA", 0) else a
    b = b.t() if n.attrs.get("transB", 0) else b
    out = n.attrs.get("alpha", 1.0) * (a @ b)
    return out if c is None else out + n.attrs.get("beta", 1.0) * c


def _clip(m: "OnnxModule", n: _Node, x, lo=None, hi=None):
    lo = n.attrs.get("min") if lo is None else lo
    hi = n.attrs.get("max") if hi is None else hi
    return torch.clamp(x, min=lo, max=hi)


def _div(m: "OnnxModule", n: _Node, a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _gather(m: "OnnxModule", n: _Node, data, idx):
    axis = n.attrs.get("axis", 0) % data.dim()
    flat = idx.reshape(-1).long() % data.shape[axis]
    out = torch.index_select(data, axis, flat)
    return out.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:]))


def _unsqueeze(m: "OnnxModule", n: _Node, x, axes=None):
    axes = n.attrs["axes"] if axes is None else axes.tolist()
    rank = x.dim() + len(axes)
    for a in sorted(int(a) % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _flatten(m: "OnnxModule", n: _Node, x):
    axis = n.attrs.get("axis", 1) % max(x.dim(), 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _dropout(m: "OnnxModule", n: _Node, x, *rest):
    return F.dropout(x, n.attrs.get("ratio", 0.5), training=m.training)


_OPS: dict[str, Callable] = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "PRelu": lambda m, n, x, slope: torch.where(x >= 0, x, x * slope),
    "Relu": lambda m, n, x: F.relu(x),
    "LeakyRelu": lambda m, n, x: F.leaky_relu(x, n.attrs.get("alpha", 0.01)),
    "Clip": _clip,
    "Sigmoid": lambda m, n, x: torch.sigmoid(x),
    "Add": lambda m, n, a, b: a + b,
    "Sub": lambda m, n, a, b: a - b,
    "Mul": lambda m, n, a, b: a * b,
    "Div": _div,
    "Gemm": _gemm,
    "MatMul": lambda m, n, a, b: torch.matmul(a, b),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "GlobalAveragePool": lambda m, n, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "AveragePool": _pool("avg"),
    "MaxPool": _pool("max"),
    "Concat": lambda m, n, *xs: torch.cat(xs, dim=n.attrs["axis"]),
    "Transpose": lambda m, n, x: x.permute(*(n.attrs.get("perm") or reversed(range(x.dim())))),
    "Identity": lambda m, n, x: x,
    "Dropout": _dropout,
    "Shape": lambda m, n, x: torch.tensor(tuple(x.shape), dtype=torch.int64),
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
}
SUPPORTED_OPS = frozenset(_OPS) | {"Constant"}

# Inputs of these ops that hold state rather than weights: kept as buffers, never trained.
_BUFFER_INPUTS = {"BatchNormalization": (3, 4)}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[a.name] = v
    return out


def _constant_value(node: _Node) -> np.ndarray:
    if "value" in node.attrs:
        return node.attrs["value"]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype=dtype)
    raise OnnxConversionError(f"node {node.name!r} (Constant): no tensor value (only value/value_float(s)/value_int(s))")


class OnnxModule(nn.Module):
    """The ONNX graph run node by node; float initializers are trainable parameters.

    `input_name`/`output_name` name the graph's tensors; `fixed_batch` is the batch size the graph was exported with
    (None when dynamic): a fixed 1 in a Reshape target is read as "the current batch".
    """

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        init_names = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in init_names]
        if len(inputs) != 1:
            raise OnnxConversionError(f"the graph has {len(inputs)} inputs; an embedder has one image batch input")
        self.input_name = inputs[0].name
        dim0 = inputs[0].type.tensor_type.shape.dim[0] if inputs[0].type.tensor_type.shape.dim else None
        self.fixed_batch = dim0.dim_value if dim0 is not None and dim0.HasField("dim_value") else None
        self.output_names = [o.name for o in graph.output]
        self.nodes: list[_Node] = []
        for i, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}_{i}"
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                raise OnnxConversionError(
                    f"node {name!r}: op {node.op_type!r} is not supported by the ONNX -> torch converter "
                    f"(supported: {', '.join(sorted(SUPPORTED_OPS))})")
            auto_pad = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "auto_pad"), b"")
            if auto_pad not in (b"", b"NOTSET", b"VALID"):
                raise OnnxConversionError(f"node {name!r} ({node.op_type}): auto_pad={auto_pad.decode()} is not "
                                          "supported (export with explicit pads)")
            self.nodes.append(_Node(node.op_type, name, tuple(node.input), tuple(node.output), _attrs(node)))
        buffer_inputs = {n.inputs[k] for n in self.nodes for k in _BUFFER_INPUTS.get(n.op, ()) if k < len(n.inputs)}
        self._slot: dict[str, str] = {}
        used: set[str] = set()
        for t in graph.initializer:
            self._store(t.name, numpy_helper.to_array(t), trainable=t.name not in buffer_inputs, used=used)
        for n in self.nodes:
            if n.op == "Constant":
                self._store(n.outputs[0], _constant_value(n), trainable=False, used=used)

    def _store(self, onnx_name: str, value: np.ndarray, *, trainable: bool, used: set[str]) -> None:
        slot = re.sub(r"\W", "_", onnx_name).strip("_") or "t"
        while slot in used or hasattr(self, slot):
            slot += "_"
        used.add(slot)
        self._slot[onnx_name] = slot
        tensor = torch.from_numpy(np.array(value, copy=True))
        if trainable and tensor.is_floating_point():
            self.register_parameter(slot, nn.Parameter(tensor))
        else:
            self.register_buffer(slot, tensor)

    def onnx_tensors(self) -> dict[str, torch.Tensor]:
        """The current value of every initializer and Constant, by its name in the ONNX graph: what writing the
        (fine-tuned) weights back into the source graph needs."""
        return {onnx_name: getattr(self, slot) for onnx_name, slot in self._slot.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_part(x)

    def run_part(self, x: torch.Tensor, start: str | None = None, stop: str | None = None) -> torch.Tensor:
        """Run the graph from tensor `start` (None: the input), whose value is `x`, to tensor `stop` (None: the output).

        With `start` a cut point (see `cut_points`), `run_part(trunk, start=cut)` is the rest of the network applied to
        `trunk = run_part(x, stop=cut)`: the same result as `forward(x)`.
        """
        env = {**self.onnx_tensors(), (self.input_name if start is None else start): x}
        stop = stop or self.output_names[0]
        begin = 0 if start is None else self._producer(start) + 1
        for n in self.nodes[begin:]:
            if n.op != "Constant":
                args = [env[i] if i else None for i in n.inputs]
                while args and args[-1] is None:
                    args.pop()
                env[n.outputs[0]] = _OPS[n.op](self, n, *args)
            if stop in n.outputs:
                break
        return env[stop]

    def _producer(self, tensor: str) -> int:
        for i, n in enumerate(self.nodes):
            if tensor in n.outputs:
                return i
        raise OnnxConversionError(f"no node of the graph computes a tensor named {tensor!r}")

    def cut_points(self) -> list[str]:
        """The tensors, in graph order, at which the graph can be cut in two: once one is computed, it is the only
        value the rest of the graph needs besides weights and constants (e.g. between two residual blocks).

        Why: when only the layers after a cut are trained, the part before it gives the same output for a photo at
        every step, so it can be computed once and cached; for MobileFaceNet's last stage that leaves 4% of the
        compute per step, which is what makes fine-tuning on a CPU affordable.
        """
        fixed = set(self._slot)
        last_use = {name: i for i, n in enumerate(self.nodes) for name in n.inputs if name}
        produced: list[tuple[int, str]] = [(-1, self.input_name)]
        cuts = []
        for i, n in enumerate(self.nodes):
            if n.op == "Constant":
                continue
            produced += [(i, o) for o in n.outputs if o not in fixed]
            live = [t for j, t in produced if last_use.get(t, -1) > i]
            if len(live) == 1 and live[0] == n.outputs[0] and n.outputs[0] not in self.output_names:
                cuts.append(n.outputs[0])
        return cuts

    def parameters_after(self, cut: str) -> list[nn.Parameter]:
        """The trainable parameters the graph uses after tensor `cut` (in first-use order): what trains when the part
        before the cut is frozen."""
        return list(dict.fromkeys(p for layer in self._layers(self._producer(cut) + 1) for p in layer))

    def layers_after(self, cut: str) -> int:
        """How many layers (nodes with trainable parameters: a Conv, a Gemm, a PRelu ...) come after tensor `cut`."""
        return len(self._layers(self._producer(cut) + 1))

    def _layers(self, begin: int) -> list[list[nn.Parameter]]:
        params = ([getattr(self, self._slot[i]) for i in n.inputs if i in self._slot] for n in self.nodes[begin:])
        return [ps for ps in ([p for p in group if isinstance(p, nn.Parameter)] for group in params) if ps]

def load_onnx_module(path: str | Path, *, require_embedder: bool = True) -> OnnxModule:
    """Read an ONNX file into a trainable `OnnxModule`.

    Input: the ONNX file. Output: the module in eval mode, float32, on the CPU. With `require_embedder`, a graph
    that is not an embedder (one N x 3 x H x W input, one N x D output) is refused with what it is instead, e.g. a
    face detector with its score/box outputs. Raises OnnxConversionError naming the file and the reason.
    """
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a file that is not ONNX
        raise OnnxConversionError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if require_embedder:
        outs = model.graph.output
        rank = len(outs[0].type.tensor_type.shape.dim) if outs else 0
        if len(outs) != 1 or rank != 2:
            shapes = ", ".join(f"{o.name}[{len(o.type.tensor_type.shape.dim)}-d]" for o in outs)
            raise OnnxConversionError(
                f"{path}: not a face embedder: it has {len(outs)} output(s) ({shapes}); an embedder has one "
                "N x D embedding output (a detector, for example, outputs scores and boxes)")
    try:
        module = OnnxModule(model)
    except OnnxConversionError as exc:
        raise OnnxConversionError(f"{path}: {exc}") from exc
    return module.eval()
