"""Fine-tuning (curation.train_on_clean): config precedence, keep-best retention, crash-safe resume, a few real steps.

The training runs here are tiny (IR-18 from random weights, 2-4 pairs per step, a handful of steps on real glint24 crops)
so the file stays within its time budget on a 2-core CPU; the recipe's full-size behaviour is what the benchmarks run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from curation.training.config import ConfigError, load_config_file, resolve_config
from curation.training.data import CropPairs, epoch_data, prepare_data
from curation.train_on_clean import main
from curation.training.loop import train, train_step
from curation.training.run_folder import Kept, RunFolder, update_top_k
from embeddings import build_backbone, load_backbone
from embeddings.losses import AdaptiveMarginPairLoss
from labels.outputs import OutputFolder
from tests.conftest import REPO, copy_identities


# ---- config -----------------------------------------------------------------------------------------------------------
def test_defaults_are_the_reference_recipe():
    cfg = resolve_config()
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.val_every) == (5e-6, 1e-2, 32, 100)
    assert (cfg.margin_s, cfg.margin_base, cfg.margin_alpha) == (64.0, 0.35, 0.1)
    assert (cfg.lr_factor, cfg.lr_patience, cfg.lr_threshold) == (0.5, 10, 1e-4)
    assert (cfg.accuracy_threshold, cfg.keep_best, cfg.val_fraction) == (0.2, 5, 0.05)


def test_config_file_then_flags_override(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('arch = "ir_18"\nlr = 1e-4\nbatch-size = 16\nmax_pos_per_identity = 50\nflip = true\n')
    yaml = tmp_path / "run.yaml"
    yaml.write_text("arch: ir_50\nlr: 2e-4\nbatch_size: 8\ngrad_clip: 5\n")
    for path, arch, lr, batch in ((toml, "ir_18", 1e-4, 16), (yaml, "ir_50", 2e-4, 8)):
        values = load_config_file(path)
        cfg = resolve_config(file_values=values)
        assert (cfg.arch, cfg.lr, cfg.batch_size) == (arch, lr, batch)
        cfg = resolve_config(file_values=values, cli_values={"lr": "3e-5", "seed": "7"})
        assert (cfg.arch, cfg.lr, cfg.batch_size, cfg.seed) == (arch, 3e-5, batch, 7)
    assert resolve_config(file_values=load_config_file(toml)).flip is True


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr = 1e-4\nlearning_rate = 3\n", "unknown option 'learning_rate'"),
        ("bach_size = 3\n", "did you mean batch_size"),
        ('batch_size = "many"\n', "batch_size must be int"),
        ('objective = "triplet"\n', "objective must be one of pair, adaface"),
        ("lr = -1.0\n", "lr must be positive"),
        ("lr = [1\n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_named_with_the_reason(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve_config(file_values=load_config_file(path))


# ---- keep-best retention and crash-safe folder ---------------------------------------------------------------------------
def _saver(step: int):
    return lambda path: path.write_text(f"weights of step {step}")


def test_top5_retention_keeps_the_five_lowest_eers_on_disk(tmp_path):
    run = RunFolder(tmp_path / "run")
    eers = [0.30, 0.25, 0.28, 0.20, 0.35, 0.22, 0.21, 0.40, 0.19, 0.25, 0.205]
    kept: list[Kept] = []
    for i, eer in enumerate(eers):
        step = 100 * (i + 1)
        kept, is_best = run.keep_checkpoint(kept, step, eer, 5, _saver(step))
        run.prune(kept)
        # Independent answer: the five lowest EERs so far, ties going to the earlier step.
        expected = sorted(((e, 100 * (j + 1)) for j, e in enumerate(eers[: i + 1])))[:5]
        assert [(k.eer, k.step) for k in kept] == expected
        on_disk = sorted(p.name for p in run.checkpoints.iterdir())
        assert on_disk == sorted(k.file for k in kept)
        assert is_best == (expected[0][1] == step)
        assert run.best.read_text() == f"weights of step {expected[0][1]}"
    assert [k.step for k in kept] == [900, 400, 1100, 700, 600]
    assert update_top_k(kept, Kept(1200, 0.19, "x"), 5)[0][1].step == 1200  # tie: the earlier step stays ahead


def test_reconcile_drops_what_a_killed_run_wrote_after_its_last_save(tmp_path):
    run = RunFolder(tmp_path / "run")
    kept: list[Kept] = []
    for step, eer in ((100, 0.3), (200, 0.2)):
        run.append_history({"step": step, "eer": eer})
        kept, _ = run.keep_checkpoint(kept, step, eer, 5, _saver(step))
        run.save_last({"step": step}, _saver(step))
        run.prune(kept)
    saved = list(kept)
    # The run went on to step 300 (a new best) and was killed before its state was written.
    run.append_history({"step": 300, "eer": 0.1})
    kept, _ = run.keep_checkpoint(kept, 300, 0.1, 5, _saver(300))
    (run.checkpoints / f".{kept[0].file}.0a1b2c3d.tmp").write_text("half a file")  # an atomic_write cut short
    assert run.best.read_text() == "weights of step 300"
    run.reconcile(200, saved)
    assert [r["step"] for r in run.history()] == [100, 200]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == sorted(k.file for k in saved)
    assert run.best.read_text() == "weights of step 200"
    assert run.load_state(200) == {"step": 200} and [p.name for p in run.states.iterdir()] == ["step_00000200.pt"]
    json.loads(run.history_file.read_text())


# ---- real steps on real aligned photos ---------------------------------------------------------------------------------
# Tiny on purpose (see the module docstring): 2 pairs per step, validation on 2 identities x 4 photos.
TINY = {
    "init": "random", "arch": "ir_18", "aligned": True, "batch_size": 2, "val_fraction": 0.34, "lr": 1e-3,
    "device": "cpu", "workers": 0, "seed": 1,
}


def _cfg(work, out, **changes):
    return resolve_config(cli_values={**TINY, "data": str(work), "out": str(out), **changes})


def test_a_few_steps_on_real_aligned_photos_lower_the_loss(glint_work, tmp_path):
    cfg = _cfg(glint_work, tmp_path / "run")
    data = prepare_data(cfg, say=lambda _: None, progress=False)
    assert len(data.table) == 24 and not set(data.train_ids) & set(data.val_ids)
    # One fixed batch of real pairs (one same person, one different), stepped on repeatedly through the real train_step.
    t = data.table[data.table["identity"].isin(data.train_ids)]
    by = [t.index[t["identity"] == name].to_numpy() for name in data.train_ids[:2]]
    a, b = np.array([by[0][0], by[0][1]]), np.array([by[0][2], by[1][0]])
    ds = CropPairs(data.crops, a, b, np.zeros(2, bool), np.zeros(2, bool), np.array([1, 0], np.float32), np.array([0, 1]))
    batch = torch.utils.data.default_collate([ds[i] for i in range(2)])
    torch.manual_seed(0)
    model = build_backbone("ir_18")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss_fn = AdaptiveMarginPairLoss()
    losses = [train_step(model, None, loss_fn, batch, opt, scaler, cfg, torch.device("cpu"), None) for _ in range(3)]
    assert losses[-1] < 0.25 * losses[0], losses


def test_val_data_is_a_fixed_held_out_set(glint_work, glint_dir, tmp_path):
    names = sorted(p.name for p in glint_dir.iterdir() if p.is_dir())[6:8]  # two people not in glint_work
    val = copy_identities(glint_dir, tmp_path / "val", names, per_identity=3)
    cfg = _cfg(glint_work, tmp_path / "run", val_data=str(val))
    data = prepare_data(cfg, say=lambda _: None, progress=False)
    assert len(data.train_ids) == 6 and data.val_ids == [f"val:{n}" for n in names]
    assert len(data.table) == 24 + 6 and (tmp_path / "run" / "val_work" / "labels.sqlite").exists()


def _weights(path):
    return load_backbone(path).state_dict()


def _same_weights(p1, p2) -> bool:
    w1, w2 = _weights(p1), _weights(p2)
    return w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.fixture(scope="module")
def reference_run(glint_work, tmp_path_factory):
    """An uninterrupted run: 4 steps, validation every 2 (at 0, 2, 4)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = train(_cfg(glint_work, out, max_steps=4, val_every=2), progress=False, say=lambda _: None)
    return out, dict(zip(result.steps, result.losses))


@pytest.mark.slow
def test_stopping_at_step_k_and_resuming_gives_the_same_next_step(glint_work, reference_run, tmp_path):
    ref_out, ref_losses = reference_run
    out = tmp_path / "run"
    first = train(_cfg(glint_work, out, max_steps=3, val_every=2), progress=False, say=lambda _: None)
    assert first.steps == [1, 2, 3] and first.losses == [ref_losses[s] for s in (1, 2, 3)]
    assert [r["step"] for r in first.history] == [0, 2, 3]
    # The CLI resumes with a larger budget; data-order options cannot change.
    assert main(["--out", str(out), "--resume", "--seed", "5", "--quiet"]) == 2
    resumed = train(_cfg(glint_work, out, max_steps=4, val_every=2), resume=True, progress=False, say=lambda _: None)
    assert resumed.steps == [4]
    assert resumed.losses[0] == ref_losses[4]  # bit for bit: same pairs, same dropout, same optimizer state
    assert _same_weights(out / "last.pt", ref_out / "last.pt")
    assert [r["step"] for r in resumed.history] == [0, 2, 3, 4]
    assert json.loads((out / "config.json").read_text())["max_steps"] == 4


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_the_same_result(glint_work, reference_run, tmp_path):
    ref_out, _ = reference_run
    out = tmp_path / "run"
    args = [sys.executable, "-m", "curation.train_on_clean", str(glint_work), "--out", str(out), "--quiet",
            "--max-steps", "4", "--val-every", "2"]
    for key, value in TINY.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 300
    while not (out / "state" / "step_00000002.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (out / "state" / "step_00000002.pt").exists(), "the run never saved step 2"
    proc.send_signal(signal.SIGKILL)  # somewhere in step 3, or while writing step 2's files: both must resume
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert main(["--out", str(out), "--resume", "--quiet"]) == 0
    assert _same_weights(out / "last.pt", ref_out / "last.pt")
    history = json.loads((out / "performance_history.json").read_text())
    assert [r["step"] for r in history] == [0, 2, 4]
    assert not list(out.rglob("*.tmp"))
    owned = OutputFolder.inspect(out, "curation.train_on_clean")  # every file of the run is listed, and exists
    assert owned.unlisted() == [] and all((out / f).is_file() for f in owned.files)


def test_cli_refuses_bad_input_with_one_line(glint_work, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main([str(glint_work), "--out", run]) == 2
    assert "missing --init" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), "--init", "random", "--out", run, "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main([str(glint_work), "--init", str(bad), "--out", str(tmp_path / "r2"), "--aligned", "--quiet"]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "never"), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "my_model.pt").write_text("a checkpoint of mine")  # what prune used to delete
    assert main([str(glint_work), "--init", "random", "--out", str(mine), "--aligned", "--quiet"]) == 2
    assert f"{mine} is not empty and holds no manifest.json" in capsys.readouterr().err
    assert [str(p.relative_to(mine)) for p in mine.rglob("*")] == ["checkpoints", "checkpoints/my_model.pt"]
    try:
        import wandb  # noqa: F401  (only its absence is tested here)
    except ImportError:
        assert main([str(glint_work), "--init", "random", "--out", str(tmp_path / "r3"), "--aligned", "--log", "wandb",
                     "--quiet"]) == 2
        assert "wandb package is not installed" in capsys.readouterr().err


# ---- options for fine-tuning a pretrained embedder: trainable layers, warm-up, share of own-deepfake pairs -----------
def test_trainable_last_k_are_the_layers_nearest_the_output(models_dir):
    import onnx

    from curation.training.trainable import layers, set_trainable
    from embeddings.onnx_backbone import load_onnx_backbone

    ir = build_backbone("ir_18")
    # IR: the output layer's Linear, then its BatchNorm2d (Dropout, Flatten and the affine-free BatchNorm1d have none)
    assert layers(ir)[-2:] == [["output_layer.0.weight", "output_layer.0.bias"],
                               ["output_layer.3.bias", "output_layer.3.weight"]]
    summary = set_trainable(ir, "last:2")
    trainable = {n for n, p in ir.named_parameters() if p.requires_grad}
    assert trainable == {"output_layer.0.weight", "output_layer.0.bias", "output_layer.3.weight", "output_layer.3.bias"}
    assert summary.n_trainable_params == 512 * 2 + 512 * 49 * 512 + 512
    # ONNX: the graph's own order says which Conv comes last; its weight and bias are the last layer
    path = models_dir / "mobilefacenet.onnx"
    graph = onnx.load(str(path)).graph
    inits = {t.name for t in graph.initializer}
    convs = [[i for i in n.input if i in inits] for n in graph.node if n.op_type == "Conv"]
    model = load_onnx_backbone(path)
    assert len(layers(model)) == len(convs)  # BN is folded into the convolutions of this file: one layer each
    set_trainable(model, "last:1")
    slot = {id(t): name for name, t in model.net.onnx_tensors().items()}
    assert {slot[id(p)] for p in model.parameters() if p.requires_grad} == set(convs[-1])
    assert set_trainable(model, "last:500").n_trainable_params == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="trainable must be 'all' or 'last:K'"):
        resolve_config(cli_values={"trainable": "last:0"})


def test_a_step_with_frozen_layers_changes_only_the_trainable_ones(glint_work, tmp_path):
    from curation.training.trainable import set_trainable

    cfg = _cfg(glint_work, tmp_path / "run", trainable="last:3")
    data = prepare_data(cfg, say=lambda _: None, progress=False)
    batch = torch.utils.data.default_collate([epoch_data(data, cfg, 0, None).dataset[i] for i in range(2)])
    torch.manual_seed(0)
    model = build_backbone("ir_18")
    set_trainable(model, cfg.trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    train_step(model, None, AdaptiveMarginPairLoss(), batch, opt, torch.amp.GradScaler("cuda", enabled=False), cfg,
               torch.device("cpu"), None)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad} and len(changed) == 6  # 3 layers x (weight, bias)


def test_warmup_scales_the_step_and_leaves_the_scheduled_rate(glint_work, tmp_path):
    """AdamW's first update of a weight is lr * (g / |g| + weight_decay * w) to within its eps: with a quarter of the
    rate it moves a quarter as far, and the optimizer's own rate (the scheduler's, the one saved) is unchanged."""
    from curation.training.loop import warmup_scale

    assert [warmup_scale(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_scale(0, 0) == 1.0
    cfg = _cfg(glint_work, tmp_path / "run", warmup_steps=4)
    data = prepare_data(cfg, say=lambda _: None, progress=False)
    batch = torch.utils.data.default_collate([epoch_data(data, cfg, 0, None).dataset[i] for i in range(2)])
    moved = {}
    for scale in (1.0, 0.25):
        torch.manual_seed(0)
        model = build_backbone("ir_18")
        w0 = model.output_layer[3].weight.detach().clone()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        train_step(model, None, AdaptiveMarginPairLoss(), batch, opt, torch.amp.GradScaler("cuda", enabled=False),
                   cfg, torch.device("cpu"), None, lr_scale=scale)
        moved[scale] = (model.output_layer[3].weight.detach() - w0).abs().max().item()
        assert opt.param_groups[0]["lr"] == cfg.lr
    assert moved[0.25] / moved[1.0] == pytest.approx(0.25, rel=1e-3)


def test_fake_fraction_sets_the_share_of_own_deepfake_pairs():
    import pandas as pd

    from curation.training.pairs import make_pairs

    # 5 identities with 6 real photos (15 same-person pairs each) and 3 deepfakes each
    t = pd.DataFrame({"identity": np.repeat([f"p{i}" for i in range(5)], 9), "is_fake": np.tile([0] * 6 + [1] * 3, 5)})
    default, _ = make_pairs(t, seed=3)
    recipe, _ = make_pairs(t, seed=3, fake_share=0.25)
    assert all(np.array_equal(getattr(default, f), getattr(recipe, f)) for f in ("a", "b", "kind"))  # the recipe's
    assert default.counts() == {"same": 75, "different": 40, "own_fake": 35}  # 15 // 2 = 7 fakes per identity
    for share, fakes in ((0.0, 0), (0.4, 5 * 12), (0.5, 75)):  # int(2 * 15 * share) per identity
        pairs, _ = make_pairs(t, seed=3, fake_share=share)
        assert pairs.counts() == {"same": 75, "different": 75 - fakes, "own_fake": fakes}
    with pytest.raises(ConfigError, match="fake_fraction must be between 0 and 0.5"):
        resolve_config(cli_values={"fake_fraction": "0.6"})
