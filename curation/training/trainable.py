"""Which parameters a fine-tuning run trains: all of them, or only the K layers nearest the output (`--trainable`).

Why: fine-tuning a pretrained embedder on a few thousand pairs can pull its early layers away from what made it
generalise; training only the last layers is the usual remedy. "Layer" must mean the same for every model the loop
trains, IR backbones (named modules) and ONNX embedders (parameters named after graph tensors such as
`onnx__Conv_527`), so layers are found from the computation itself: one forward pass on a small batch, each parameter
grouped with the others the same operation consumes (a convolution's weight and bias, a batch norm's scale and shift,
a linear layer's weight and bias), in the order the forward pass runs the operations. Frozen parameters get
`requires_grad = False` and are left out of the optimizer; batch-norm running statistics still update in training mode.

Example:
    >>> summary = set_trainable(model, "last:2")      # e.g. IR: output_layer.3 (Linear) and output_layer.0 (BN2d)
    >>> summary.describe()
    'trainable: the last 2 of 73 layers (262,656 of 11,008,000 parameters)'
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from embeddings.backbones import INPUT_SIZE


def parse_trainable(text: str) -> int | None:
    """"all" -> None; "last:K" (K >= 1) -> K. ValueError with the accepted forms otherwise."""
    if text == "all":
        return None
    kind, _, k = text.partition(":")
    if kind == "last" and k.isdigit() and int(k) >= 1:
        return int(k)
    raise ValueError(f"trainable must be 'all' or 'last:K' (K >= 1 layers nearest the output), got {text!r}")


def layers(model: nn.Module) -> list[list[str]]:
    """The model's parameters grouped by the operation that consumes them, in forward order (input first).

    Input: a model taking [N, 3, 112, 112] (run once on zeros, in eval mode, with gradients recorded; its mode is
    restored). Output: a list of layers, each the names (as in `named_parameters`) of the parameters one operation
    uses. A parameter that only passes through parameter-only operations (a transpose of a linear weight) belongs to
    the operation that combines it with the data. Parameters the forward never uses are not listed.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.enable_grad():
            # the input records gradients too: an operation that takes data is then never taken for a parameter-only one
            out = model(torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE, device=device, requires_grad=True))
            root = (out[0] if isinstance(out, tuple) else out).sum().grad_fn
            return _groups(root, names)
    finally:
        model.train(was_training)


def _groups(root, names: dict[int, str]) -> list[list[str]]:
    """Walk the autograd graph from `root`: operations in post-order (every one after all of its inputs), each with the
    parameters reaching it only through parameter-only operations."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:  # iterative post-order DFS (an IR-101's graph is too deep to recurse)
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((nxt, False) for nxt, _ in reversed(node.next_functions) if nxt is not None and id(nxt) not in seen)
    params_of: dict[int, list[str] | None] = {}  # node -> its parameters if it is parameter-only, else None
    for node in order:
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf tensor
            params_of[id(node)] = [names[id(node.variable)]] if id(node.variable) in names else None
            continue
        inputs = [params_of.get(id(nxt)) for nxt, _ in node.next_functions if nxt is not None]
        params_of[id(node)] = sum(inputs, []) if inputs and all(p is not None for p in inputs) else None
    groups: list[list[str]] = []
    taken: set[str] = set()
    for node in order:
        if params_of[id(node)] is not None:
            continue  # a parameter-only operation: its parameters go to the operation that uses its result
        mine = [n for nxt, _ in node.next_functions if nxt is not None for n in (params_of.get(id(nxt)) or [])]
        mine = [n for n in dict.fromkeys(mine) if n not in taken]
        if mine:
            taken.update(mine)
            groups.append(mine)
    return groups


@dataclass(frozen=True)
class TrainableSummary:
    """What `set_trainable` did: layers and parameter counts, all and trainable."""

    spec: str
    n_layers: int
    n_trainable_layers: int
    n_params: int
    n_trainable_params: int

    def describe(self) -> str:
        which = "all" if self.n_trainable_layers == self.n_layers else f"the last {self.n_trainable_layers} of"
        return (f"trainable: {which} {self.n_layers} layers ({self.n_trainable_params:,} of {self.n_params:,} "
                "parameters)")


def set_trainable(model: nn.Module, spec: str) -> TrainableSummary:
    """Freeze every parameter outside the layers `spec` names ("all" | "last:K"): requires_grad False.

    K larger than the number of layers trains them all. Output: a TrainableSummary for the run's log.

    Example:
        >>> set_trainable(load_onnx_backbone("mobilefacenet.onnx"), "last:1").n_trainable_params
        16512
    """
    k = parse_trainable(spec)
    for p in model.parameters():  # a frozen parameter would be invisible to the forward pass that finds the layers
        p.requires_grad_(True)
    groups = layers(model)
    train = {n for g in (groups if k is None else groups[-k:]) for n in g}
    for name, p in model.named_parameters():
        p.requires_grad_(k is None or name in train)
    params = dict(model.named_parameters())
    return TrainableSummary(
        spec, len(groups), len(groups) if k is None else min(k, len(groups)),
        sum(p.numel() for p in params.values()), sum(p.numel() for n, p in params.items() if p.requires_grad),
    )
