"""Fine-tuning under torchrun: 2 CPU processes (gloo) launched exactly as a user would, on real aligned glint24 photos.

Three short launches (an uninterrupted 4-step run, a 2-step run, and its resume to step 4) of IR-18 from random weights
with 2 pairs per process per step, so the file stays within its time budget on a 2-core CPU. What is checked: both
ranks end with the same weights (each prints a fingerprint of them) and those are the weights in last.pt, which loads
with embeddings.load_backbone and has the single-process keys; rank 0 alone logged and wrote the run folder; the
sharded validation gives the EER a single process computes from the saved weights; resuming under torchrun continues
from the saved step to the very weights of the uninterrupted run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from curation.training.distributed import fingerprint
from curation.training.config import resolve_config
from curation.training.data import RankSlices, prepare_data, validation_pairs
from curation.training.loop import validate
from embeddings import build_backbone, load_backbone, read_checkpoint
from tests.conftest import REPO

# 6 identities x 4 photos, half held out: 36 training pairs (9 global batches of 4), 12 validation photos, which are
# embedded in batches of 8, so rank 0 gets a full batch and rank 1 the uneven last one. Validation (and a save) at steps
# 0 and 4, and at 2 where the split run stops; one kept checkpoint: each save writes IR-18 weights and AdamW state.
TINY = {
    "init": "random", "arch": "ir_18", "aligned": True, "batch_size": 4, "val_fraction": 0.5, "lr": 1e-3,
    "device": "cpu", "workers": 0, "seed": 1, "val_every": 4, "keep_best": 1,
}


def test_rank_slices_split_each_global_batch_and_resume_in_global_items():
    n, batch = 23, 6
    single = list(RankSlices(n, 0, batch))
    assert single == list(range(18))  # whole batches only, in order: the single-process loader's items
    for size in (2, 3):
        for start in (0, 6, 12):
            per_rank = [list(RankSlices(n, start, batch, rank, size)) for rank in range(size)]
            steps = (n - start) // batch
            for k in range(steps):  # step k: the ranks' slices, side by side, are global batch k from `start`
                together = sum((r[k * batch // size:(k + 1) * batch // size] for r in per_rank), [])
                assert together == list(range(start + k * batch, start + (k + 1) * batch))
            assert all(len(r) == steps * batch // size for r in per_rank)


def _torchrun(*args: str) -> subprocess.Popen:
    """Start `torchrun --standalone --nproc-per-node 2 -m curation.train_on_clean ARGS` (free port, 1 thread each)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "curation.train_on_clean", *args, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


def _flags(**changes) -> list[str]:
    out = []
    for key, value in {**TINY, **changes}.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def _weights_printed(stdout: str) -> dict[str, str]:
    """{'rank 0': fingerprint, 'rank 1': fingerprint} from the end-of-run lines of both processes."""
    found = {"rank 0": re.findall(r"\(weights ([0-9a-f]{16})\)", stdout)}
    found["rank 1"] = re.findall(r"rank 1 of 2: ran \d+ step\(s\); weights ([0-9a-f]{16})", stdout)
    assert all(len(v) == 1 for v in found.values()), stdout
    return {k: v[0] for k, v in found.items()}


@pytest.fixture(scope="module")
def runs(glint_work, tmp_path_factory):
    """The uninterrupted run (4 steps) and the same run stopped at step 2 and resumed to step 4, all under torchrun."""
    base = tmp_path_factory.mktemp("ddp")
    ref, split = base / "ref", base / "split"
    # The first two are independent: run side by side (their waits for one another's ranks overlap).
    started = [_torchrun(str(glint_work), "--out", str(run), *_flags(max_steps=steps))
               for run, steps in ((ref, 4), (split, 2))]
    out = dict(zip(("ref", "first"), map(_finished, started)))
    out["resumed"] = _finished(_torchrun("--out", str(split), "--resume", "--max-steps", "4"))
    return ref, split, out


@pytest.mark.slow
def test_both_ranks_end_in_step_with_the_weights_saved_in_last_pt(runs):
    ref, _, out = runs
    printed = _weights_printed(out["ref"])
    assert printed["rank 0"] == printed["rank 1"]
    model = load_backbone(ref / "last.pt")
    assert fingerprint(model).startswith(printed["rank 0"])
    assert list(model.state_dict()) == list(build_backbone("ir_18").state_dict())  # no "module." prefix
    assert model.arch == "ir_18"


@pytest.mark.slow
def test_only_rank_0_logs_and_writes_the_run_folder(runs):
    ref, _, out = runs
    stdout = out["ref"]
    for line in ("configuration:", "step 0: EER", "step 4: EER", "distributed: 2 processes (cpu)"):
        assert stdout.count(line) == 1, line
    history = json.loads((ref / "performance_history.json").read_text())
    assert [r["step"] for r in history] == [0, 4]  # two writers would have appended each record twice
    assert sorted(p.name for p in ref.iterdir()) == [
        "best.pt", "checkpoints", "config.json", "last.pt", "manifest.json", "performance_history.json", "state"]
    assert [p.name for p in (ref / "state").iterdir()] == ["step_00000004.pt"]
    assert len(list((ref / "checkpoints").iterdir())) == 1 and not list(ref.rglob("*.tmp"))
    state = torch.load(ref / "state" / "step_00000004.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2


def test_sharded_validation_gives_the_single_process_eer(runs, glint_work):
    ref, _, _ = runs
    cfg = resolve_config(cli_values={**TINY, "data": str(glint_work), "out": str(ref)})
    data = prepare_data(cfg, say=lambda _: None, progress=False)
    pairs, _ = validation_pairs(data, cfg)
    assert len(np.unique(np.concatenate([pairs.a, pairs.b]))) > 2 * cfg.batch_size  # more than one batch to share
    history = json.loads((ref / "performance_history.json").read_text())
    metrics = validate(load_backbone(ref / "last.pt"), data, pairs, cfg, torch.device("cpu"), None)
    assert (metrics["eer"], metrics["eer_threshold"]) == (history[-1]["eer"], history[-1]["eer_threshold"])


@pytest.mark.slow
def test_resuming_under_torchrun_continues_from_the_saved_step(runs):
    ref, split, out = runs
    assert "resuming" in out["resumed"] and "at step 2" in out["resumed"]
    assert "ran 2 step(s)" in out["resumed"] and "rank 1 of 2: ran 2 step(s)" in out["resumed"]
    assert [r["step"] for r in json.loads((split / "performance_history.json").read_text())] == [0, 2, 4]
    assert int(read_checkpoint(split / "last.pt").meta["step"]) == 4
    printed = _weights_printed(out["resumed"])
    assert printed["rank 0"] == printed["rank 1"] == _weights_printed(out["ref"])["rank 0"]  # bit for bit
