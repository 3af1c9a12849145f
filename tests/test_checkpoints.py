"""Checkpoint loading: every format a user brings loads strictly and gives the same outputs; bad files get one clear
sentence and never run code."""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from embeddings import CheckpointError, build_backbone, load_backbone, read_checkpoint, save_backbone


@pytest.fixture(scope="module")
def ir18():
    """An IR-18 whose every tensor (BN statistics included) is random, so a mis-mapped key would change outputs."""
    torch.manual_seed(0)
    model = build_backbone("ir_18").eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.05)
    return model


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(1))


def _same_outputs(model, reference, x):
    with torch.inference_mode():
        got, ref = model(x), reference(x)
    assert not model.training
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def _same_weights(model, reference):
    """Cheaper than a forward pass and as strict: every tensor equal, key for key, and eval mode."""
    assert not model.training
    got, ref = model.state_dict(), reference.state_dict()
    assert list(got) == list(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def _fake_module_class(monkeypatch, module: str, cls: type) -> None:
    """Make `cls` importable as module.ClassName (as if pytorch_lightning were installed) for pickling."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    cls.__module__, cls.__qualname__ = module, cls.__name__
    setattr(sys.modules[module], cls.__name__, cls)


def _lightning_ckpt(model) -> dict:
    """The layout of the official AdaFace .ckpt: model.* backbone, head.* margin head, trainer bookkeeping."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({"head.kernel": torch.randn(512, 7), "head.t": torch.zeros(1),
                  "head.batch_mean": torch.ones(1) * 20, "head.batch_std": torch.ones(1) * 100})
    return {
        "epoch": 25, "global_step": 123456, "pytorch-lightning_version": "1.8.6", "state_dict": state,
        "optimizer_states": [{"state": {0: {"momentum_buffer": torch.zeros(4)}},
                              "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}],
        "lr_schedulers": [{"milestones": {12: 1, 20: 1}, "gamma": 0.1, "last_epoch": 25}],
        "callbacks": {"ModelCheckpoint{'monitor': 'val_acc'}": {"best_model_score": torch.tensor(0.97),
                                                                 "dirpath": "/experiments/ir101"}},
        "hyper_parameters": {"arch": "ir_101", "head": "adaface", "m": 0.4, "h": 0.333, "lr_milestones": [12, 20]},
    }


def test_official_adaface_ckpt_loads_and_gives_identical_outputs(tmp_path, ir18, x):
    path = tmp_path / "adaface_ir18_webface4m.ckpt"
    torch.save(_lightning_ckpt(ir18), path)
    ckpt = read_checkpoint(path)
    assert (ckpt.arch, ckpt.source) == ("ir_18", "adaface-ckpt")
    assert any("4 keys outside the backbone" in n and "head.kernel" in n for n in ckpt.notes)
    _same_outputs(load_backbone(path), ir18, x)


def test_lightning_bookkeeping_classes_become_placeholders_without_running_their_code(tmp_path, ir18, monkeypatch):
    """Old Lightning versions pickle AttributeDict / argparse.Namespace / callback classes beside the weights."""
    calls = []

    class AttributeDict(dict):
        def __setitem__(self, key, value):  # would run if the loader ever built the real class
            calls.append(key)
            super().__setitem__(key, value)

    class ModelCheckpoint:
        pass

    _fake_module_class(monkeypatch, "pytorch_lightning.utilities.parsing", AttributeDict)
    _fake_module_class(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint)
    ckpt = _lightning_ckpt(ir18)
    ckpt["hyper_parameters"] = AttributeDict(arch="ir_18", lr=0.1)
    ckpt["hparams"] = argparse.Namespace(arch="ir_18", batch_size=512)
    ckpt["callbacks"] = {ModelCheckpoint: {"best_model_score": torch.tensor(0.9)}}  # PL < 1.5 keyed by class
    path = tmp_path / "old_lightning.ckpt"
    torch.save(ckpt, path)
    calls.clear()
    info = read_checkpoint(path)
    assert any("pytorch_lightning.utilities.parsing.AttributeDict" in n and "argparse.Namespace" in n
               for n in info.notes)
    _same_weights(load_backbone(path), ir18)
    assert calls == []


@pytest.mark.parametrize("wrap", [False, True])
def test_cvlface_model_pt_with_net_prefix_loads(tmp_path, ir18, wrap):
    weights = {f"net.{k}": v for k, v in ir18.state_dict().items()}
    path = tmp_path / "model.pt"
    torch.save({"state_dict": weights} if wrap else weights, path)
    assert read_checkpoint(path).source == "cvlface-pt"
    _same_weights(load_backbone(path), ir18)


def test_cvlface_safetensors_with_model_net_prefix_loads(tmp_path, ir18, x):
    path = tmp_path / "model.safetensors"
    save_file({f"model.net.{k}": v.contiguous() for k, v in ir18.state_dict().items()}, str(path))
    ckpt = read_checkpoint(path, arch="ir_18")
    assert (ckpt.arch, ckpt.source) == ("ir_18", "cvlface-safetensors")
    _same_outputs(load_backbone(path), ir18, x)


def test_bare_and_legacy_format_state_dicts_load(tmp_path, ir18):
    bare = tmp_path / "bare.pth"
    torch.save(ir18.state_dict(), bare)
    _same_weights(load_backbone(bare), ir18)
    legacy = tmp_path / "legacy.pth"  # torch < 1.6 wrote a plain pickle stream, not a zip (no mmap possible)
    torch.save({f"module.{k}": v for k, v in ir18.state_dict().items()}, legacy, _use_new_zipfile_serialization=False)
    _same_weights(load_backbone(legacy), ir18)


def test_own_format_round_trip_is_atomic_and_keeps_meta(tmp_path, ir18):
    path = tmp_path / "run" / "best.pt"
    save_backbone(ir18, path, step=1200, eer=0.031, history=[{"step": 100, "eer": 0.2}], note=None)
    save_backbone(ir18, path, step=1300, eer=0.029)  # overwrite in place
    ckpt = read_checkpoint(path)
    assert (ckpt.arch, ckpt.source, ckpt.meta) == ("ir_18", "facecur", {"step": 1300, "eer": 0.029})
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temporary file left behind
    _same_weights(load_backbone(path, arch="ir_18"), ir18)
    with pytest.raises(TypeError, match="meta\\['when'\\] is a object"):
        save_backbone(ir18, tmp_path / "x.pt", when=object())
    assert not (tmp_path / "x.pt").exists()


def test_wrong_depth_names_what_the_file_holds(tmp_path, ir18):
    path = tmp_path / "cvlface_ir101" / "model.pt"
    path.parent.mkdir()
    torch.save({f"net.{k}": v for k, v in ir18.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match=r"this file holds IR-18 weights \(8 units\), you asked for ir_101") as e:
        load_backbone(path, arch="ir_101")
    assert e.value.path == str(path) and str(e.value).startswith(str(path))


def test_missing_and_unexpected_keys_are_summarised_not_dumped(tmp_path, ir18):
    sd = {k: v for k, v in ir18.state_dict().items() if not k.startswith("output_layer.")}
    for unit in range(8):  # SE modules (an IR-SE checkpoint): 2 extra keys in every unit
        sd[f"body.{unit}.res_layer.6.fc1.weight"] = torch.zeros(4, 64, 1, 1)
        sd[f"body.{unit}.res_layer.6.fc2.weight"] = torch.zeros(64, 4, 1, 1)
    path = tmp_path / "ir_se.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_backbone(path)
    msg = str(e.value)
    assert "10 keys the ir_18 backbone needs missing" in msg and "output_layer." in msg
    assert "16 keys not part of an ir_18 backbone (body.*.res_layer.6.fc1.weight (8)" in msg
    assert len(msg) < 500


def test_misshapen_tensor_is_named(tmp_path, ir18):
    sd = dict(ir18.state_dict())
    sd["output_layer.3.weight"] = torch.zeros(512, 512 * 4 * 4)
    path = tmp_path / "small_input.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"output_layer.3.weight is \[512, 8192\] in the file, ir_18 needs "
                                              r"\[512, 25088\]"):
        load_backbone(path)


@pytest.mark.parametrize("kind, match", [
    ("truncated_zip", "truncated or corrupt"),
    ("truncated_safetensors", "truncated or corrupt safetensors file"),
    ("random_bytes", "not a checkpoint"),
    ("pickle_like_bytes", "truncated, corrupt or not a plain checkpoint"),
    ("empty", "empty file"),
    ("plain_dict", "no weights in it"),
    ("optimizer", "optimizer state"),
    ("classifier", "not an IR backbone.*conv1.weight"),
    ("list", "holds a list"),
    ("torchscript", "a TorchScript archive"),
    ("pickled_module", r"would run Python code \(it calls torch.nn.modules.linear.Linear\)"),
])
def test_broken_or_foreign_files_get_a_clear_error(tmp_path, ir18, kind, match):
    path = tmp_path / f"{kind}.ckpt"
    rng = np.random.default_rng(0)
    small = {k: v for k, v in ir18.state_dict().items() if k.startswith("input_layer.")}  # truncation needs no more
    if kind == "truncated_zip":
        torch.save({"state_dict": small, "epoch": 1}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated_safetensors":
        save_file(small, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "random_bytes":
        path.write_bytes(rng.bytes(4096))
    elif kind == "pickle_like_bytes":
        path.write_bytes(b"\x80\x02" + rng.bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "plain_dict":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif kind == "optimizer":
        torch.save(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1).state_dict(), path)
    elif kind == "classifier":
        torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, path)
    elif kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; users still have such files
            torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    elif kind == "pickled_module":  # torch.save(model) instead of its state_dict
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=match) as e:
        load_backbone(path)
    assert e.value.path == str(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_backbone(tmp_path)
    with pytest.raises(CheckpointError, match="unknown architecture 'ir_200'"):
        load_backbone(tmp_path / "nope.ckpt", arch="ir_200")


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("how", ["torch_save_system", "torch_save_eval", "raw_pickle", "raw_pickle_protocol_5"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, ir18, how):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    if how == "torch_save_system":
        torch.save({"state_dict": {"input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, "hook": _RunsShell(marker)}, path)
    elif how == "torch_save_eval":
        torch.save({"state_dict": _Evals(marker)}, path)
    elif how == "raw_pickle":
        path.write_bytes(pickle.dumps(_RunsShell(marker), protocol=2))
    else:
        path.write_bytes(pickle.dumps(_RunsShell(marker), protocol=5))
    with pytest.raises(CheckpointError) as e:
        load_backbone(path)
    assert not marker.exists()
    if how == "raw_pickle_protocol_5":  # torch's weights-only reader stops at the framing before any global
        assert "not allowed in a weights-only load" in str(e.value)
    else:
        called = "builtins.eval" if how == "torch_save_eval" else "posix.system"
        assert f"refused: loading this pickle would run Python code (it calls {called})" in str(e.value)
