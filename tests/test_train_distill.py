"""`--distill`: the term that holds real photos at the initial model's embeddings while fine-tuning, on real crops.

What is checked: the loss of a step is the pair loss plus distill x mean(1 - cos(embedding, initial embedding)) over the
batch's real photos only (computed here independently); a run with distill keeps the real photos' embeddings nearer
their start than the same run without; a resumed run gets the same teacher (the very weights of an uninterrupted run,
IR from random weights and ONNX from RUN/init.onnx); under torchrun the term is the global batch's mean.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from curation.training.data import CropPairs, prepare_data
from curation.training.loop import train, train_step
from curation.training.pairs import DIFFERENT, OWN_FAKE, SAME
from embeddings import load_backbone
from embeddings.losses import AdaptiveMarginPairLoss
from embeddings.onnx_backbone import load_onnx_backbone
from embeddings.preprocess import to_input
from tests.test_train_onnx import _cfg, _flags, _tuned, glint8, mfn, one_thread  # noqa: F401 (fixtures)

QUIET = {"progress": False, "say": lambda _: None}


def test_the_loss_adds_distill_times_the_real_photos_drift_from_the_teacher(mfn, glint8, tmp_path):
    cfg = _cfg(mfn, glint8, tmp_path / "run", distill=50.0)
    data = prepare_data(cfg, say=lambda _: None, progress=False)
    rows = data.table.index.to_numpy()
    a, b = rows[[0, 6, 12, 18]], rows[[1, 7, 13, 19]]
    kind = np.array([SAME, DIFFERENT, OWN_FAKE, OWN_FAKE])  # the last two b's count as deepfakes: no distillation
    ds = CropPairs(data.crops, a, b, np.array([0, 1, 0, 1], bool), np.array([1, 0, 0, 1], bool),
                   np.array([1, 0, 0, 0], np.float32), kind)
    crop_a, crop_b, label, kinds = batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    teacher = load_onnx_backbone(mfn).eval()
    student = load_onnx_backbone(mfn)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * p.std() * torch.randn_like(p))
    loss_fn = AdaptiveMarginPairLoss(cfg.margin_s, cfg.margin_base, cfg.margin_alpha)
    with torch.no_grad():  # the expected value, from the two models directly
        ua, ub = (student(to_input(c, "adaface"))[0] for c in (crop_a, crop_b))
        ta, tb = (teacher(to_input(c, "adaface"))[0] for c in (crop_a, crop_b))
        pair = float(loss_fn((ua * ub).sum(1), label))
        gaps = torch.cat([1 - (ua * ta).sum(1), 1 - (ub[:2] * tb[:2]).sum(1)])  # 4 a's + the 2 real b's
    assert float(gaps.min()) > 1e-4  # the perturbed student really differs from the teacher
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    got = train_step(student, None, loss_fn, batch, opt, scaler, cfg, torch.device("cpu"), None, teacher=teacher)
    assert got == pytest.approx(pair + 50.0 * float(gaps.mean()), rel=1e-5)
    assert kinds.tolist() == kind.tolist()
    without = train_step(student, None, loss_fn, batch, opt, scaler, cfg, torch.device("cpu"), None)
    assert without == pytest.approx(pair, rel=1e-5)


TAIL = {"trainable": "last:9", "lr": 1e-3, "max_steps": 6, "val_every": 3}


@pytest.fixture(scope="module")
def tail_runs(mfn, glint8, tmp_path_factory):
    """The same 6 steps on MobileFaceNet's last 9 layers at lr 1e-3, with distill 0 and 50."""
    root = tmp_path_factory.mktemp("distill")
    return {d: train(_cfg(mfn, glint8, root / f"d{d}", distill=d, **TAIL), **QUIET) for d in (0.0, 50.0)}


def test_distill_keeps_the_real_photos_near_their_start(tail_runs, mfn, glint8, tmp_path):
    # Step 1 starts from the teacher itself: the term is 0, the losses agree; then they part.
    assert tail_runs[50.0].losses[0] == pytest.approx(tail_runs[0.0].losses[0], rel=1e-5)
    assert tail_runs[50.0].losses[1:] != tail_runs[0.0].losses[1:]
    x = to_input(torch.stack(_training_crops(mfn, glint8, tmp_path)), "adaface")
    with torch.no_grad():
        start = load_onnx_backbone(mfn).eval()(x)[0]
        drift = {d: float((1 - (_tuned(r.run, "last.pt")(x)[0] * start).sum(1)).mean()) for d, r in tail_runs.items()}
    assert drift[0.0] > 1e-3, drift  # lr 1e-3 on the tail moves the real photos without distillation
    assert drift[50.0] < 0.5 * drift[0.0], drift


def _training_crops(mfn, glint8, tmp_path) -> list[torch.Tensor]:
    cfg = _cfg(mfn, glint8, tmp_path / "run")
    data = prepare_data(cfg, say=lambda _: None, progress=False)
    return [data.crops[int(i)] for i in data.table.index]


def test_a_resumed_onnx_run_gets_the_same_teacher(tail_runs, mfn, glint8, tmp_path):
    ref = tail_runs[50.0]
    out = tmp_path / "run"
    first = train(_cfg(mfn, glint8, out, distill=50.0, **{**TAIL, "max_steps": 3}), **QUIET)
    assert first.losses == ref.losses[:3]
    resumed = train(_cfg(mfn, glint8, out, distill=50.0, **TAIL), resume=True, **QUIET)
    assert resumed.losses == ref.losses[3:] and resumed.weights == ref.weights  # bit for bit


def test_a_resumed_ir_run_from_random_weights_gets_the_same_teacher(glint_work, tmp_path):
    from tests.test_train import _cfg as ir_cfg, _same_weights

    ref = train(ir_cfg(glint_work, tmp_path / "ref", max_steps=4, val_every=2, distill=5.0), **QUIET)
    plain = train(ir_cfg(glint_work, tmp_path / "plain", max_steps=4, val_every=2), **QUIET)
    # (no equality at step 1 here: the student's batch norm uses batch statistics, the teacher's its running ones)
    assert ref.losses != plain.losses
    out = tmp_path / "run"
    train(ir_cfg(glint_work, out, max_steps=2, val_every=2, distill=5.0), **QUIET)
    resumed = train(ir_cfg(glint_work, out, max_steps=4, val_every=2, distill=5.0), resume=True, **QUIET)
    assert resumed.losses == ref.losses[2:] and _same_weights(out / "last.pt", tmp_path / "ref" / "last.pt")
    assert not _same_weights(out / "last.pt", tmp_path / "plain" / "last.pt")
    assert load_backbone(out / "last.pt").arch == "ir_18"


@pytest.mark.slow
def test_torchrun_gives_the_single_process_distilled_run(tail_runs, mfn, glint8, tmp_path):
    """2 processes of 4 pairs each train with the teacher to the one-process run's embeddings (up to float summation
    order, which Adam amplifies on a few near-zero-gradient weights: embeddings are compared, not weights). These photos
    hold no deepfakes, so every rank has as many real photos: the global-batch normalisation is not what is tested
    here (the formula is, in the loss test above)."""
    from tests.test_train_ddp import _finished, _torchrun

    data, work = glint8
    out = tmp_path / "ddp"
    flags = _flags(mfn, data, distill=50.0, **{**TAIL, "max_steps": 3})
    _finished(_torchrun(str(work), "--out", str(out), *flags))
    one = train(_cfg(mfn, glint8, tmp_path / "one", distill=50.0, **{**TAIL, "max_steps": 3}), **QUIET)
    assert one.losses == tail_runs[50.0].losses[:3]
    x = to_input(torch.stack(_training_crops(mfn, glint8, tmp_path)), "adaface")
    with torch.no_grad():
        ddp, single, start = (m(x)[0] for m in (_tuned(out, "last.pt"), _tuned(one.run, "last.pt"),
                                                 load_onnx_backbone(mfn).eval()))
    gap = float((ddp - single).abs().max())
    assert gap < 1e-4 and float((single - start).abs().max()) > 100 * gap  # the tail trained, the same way
