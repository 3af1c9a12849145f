"""Fine-tuning from an ONNX embedder (`train_on_clean --init onnx:FILE`) on real aligned glint24 crops: it learns,
writes RUN/best.onnx and last.onnx that onnxruntime runs as the torch module does, `--model onnx:RUN/best.onnx` works
in curation.evaluate, a killed run resumes to the very weights of an uninterrupted one, a detector is refused in one
line, and the presets resolve.

The run is small (the shared MobileFaceNet, 8 identities x 6 photos, 8 pairs a step, 6 steps). It validates on the
training photos themselves (`--val-data` = the training folder), so that validation measures what the few steps
optimise and "the best checkpoint is not step 0" is a statement about learning, not luck; whether fine-tuning helps on
held-out identities is what benchmarks/noisy_vs_clean.py measures.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from curation import evaluate
from curation.scoring.metrics import equal_error_rate
from curation.train_on_clean import main
from curation.training.config import ConfigError, load_config, resolve_config
from curation.training.data import TrainData, epoch_data, prepare_data, validation_pairs
from curation.training.loop import train, validate
from curation.training.pairs import OWN_FAKE
from curation.training.presets import PRESETS
from embeddings import read_checkpoint
from embeddings.checkpoints import CheckpointError, load_backbone
from embeddings.embedders import make_embedder
from embeddings.losses import AdaptiveMarginPairLoss
from embeddings.onnx_backbone import OnnxBackbone, load_onnx_backbone
from embeddings.ortsession import ort_session
from embeddings.preprocess import ONNX_CONVENTION_KEY, to_input
from labels.imagefile import read_rgb
from labels.outputs import OutputFolder
from tests.conftest import REPO, ingested_glint


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in this module (and its subprocess): with the 2 cores shared by other work, two threads spin
    against each other and MobileFaceNet's depthwise convolutions run ~8x slower (measured 0.5 s vs 4.3 s a batch)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mfn(models_dir):
    return models_dir / "mobilefacenet.onnx"


@pytest.fixture(scope="module")
def glint8(glint_dir, tmp_path_factory):
    """(dataset folder, work folder): 8 glint24 identities x 6 aligned photos, ingested."""
    return ingested_glint(glint_dir, tmp_path_factory, 8, 6)


def _options(mfn, data) -> dict:
    return {"init": f"onnx:{mfn}", "aligned": True, "batch_size": 8, "lr": 1e-4, "device": "cpu", "workers": 0,
            "seed": 1, "max_steps": 6, "val_every": 2, "val_data": str(data), "keep_best": 2}


def _flags(mfn, data, **changes) -> list[str]:
    """The options as command-line flags, for runs in a subprocess."""
    out = []
    for key, value in {**_options(mfn, data), **changes}.items():
        out += ["--" + key.replace("_", "-")] + ([] if value is True else [str(value)])
    return out


def _cfg(mfn, glint8, out, **changes):
    data, work = glint8
    return resolve_config(cli_values={**_options(mfn, data), "data": str(work), "out": str(out), **changes})


@pytest.fixture(scope="module")
def onnx_run(mfn, glint8, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "run"
    cfg = _cfg(mfn, glint8, out)
    return cfg, train(cfg, progress=False, say=lambda _: None)


def _tuned(run, checkpoint: str) -> OnnxBackbone:
    """The fine-tuned torch module of a checkpoint, rebuilt independently of the loop: init.onnx + its state_dict."""
    model = load_onnx_backbone(run / "init.onnx")
    model.load_state_dict(read_checkpoint(run / checkpoint).state_dict, strict=True)
    return model.eval()


def _unit(model, crops) -> np.ndarray:
    with torch.no_grad():
        return model(to_input(crops, "adaface"))[0].numpy()


def test_a_few_steps_from_onnx_learn_and_write_a_checked_best_onnx(onnx_run, mfn):
    cfg, result = onnx_run
    run = result.run
    assert result.steps == [1, 2, 3, 4, 5, 6] and [r["step"] for r in result.history] == [0, 2, 4, 6]
    # The loss on fixed real training pairs falls from the start model to the fine-tuned one (both in eval mode).
    data = prepare_data(cfg, say=lambda _: None, progress=False)
    ds = epoch_data(data, cfg, 0, None).dataset
    crop_a, crop_b, label, _ = torch.utils.data.default_collate([ds[i] for i in range(48)])
    loss_fn = AdaptiveMarginPairLoss(cfg.margin_s, cfg.margin_base, cfg.margin_alpha)

    def loss(model) -> float:
        with torch.no_grad():
            ua, _ = model(to_input(crop_a, "adaface"))
            ub, _ = model(to_input(crop_b, "adaface"))
        return float(loss_fn((ua * ub).sum(1), label))

    start = load_onnx_backbone(mfn)
    assert loss(_tuned(run, "last.pt")) < 0.9 * loss(start)
    # Validation improved on what was trained, so the best checkpoint is a fine-tuned one, and best.onnx holds it.
    assert result.best.step > 0 and result.best.eer < result.history[0]["eer"]
    assert read_checkpoint(run / "best.pt").meta["step"] == result.best.step
    assert result.onnx == [run / "best.onnx", run / "last.onnx"]

    crops = np.stack([data.crops[i].numpy() for i in range(0, len(data.table), 3)])  # 16 real crops
    for name, pt in (("best.onnx", "best.pt"), ("last.onnx", "last.pt")):
        session = ort_session(run / name)  # onnxruntime loads it: same graph as the source, same input and output
        assert [i.name for i in session.get_inputs()] == [onnx.load(str(mfn)).graph.input[0].name]
        meta = session.get_modelmeta().custom_metadata_map
        assert meta[ONNX_CONVENTION_KEY] == "arcface_rgb" and meta["torch_checkpoint"] == pt
        got, _ = make_embedder(f"onnx:{run / name}", device="cpu").embed(crops)
        assert np.abs(got - _unit(_tuned(run, pt), crops)).max() <= 1e-4  # what the torch module computes
        assert np.abs(got - _unit(start, crops)).max() > 1e-2  # and not what the start model computed
    # The torch checkpoints are the project's format with arch "onnx": only the ONNX route loads them.
    with pytest.raises(CheckpointError, match="fine-tuned ONNX embedder"):
        load_backbone(run / "best.pt")
    owned = OutputFolder.inspect(run, "curation.train_on_clean")
    assert owned.unlisted() == [] and {"init.onnx", "best.onnx", "last.onnx", "best.pt"} <= owned.files
    assert (run / "init.onnx").read_bytes() == mfn.read_bytes()


def test_validation_reports_real_only_eer_and_deepfake_far(mfn, glint_dir):
    """validate's figures against a direct computation on real embeddings: one photo per identity is marked a
    deepfake of it (the same person, so most pass: a high deepfake FAR is the right answer here)."""
    names = sorted(p.name for p in glint_dir.iterdir() if p.is_dir())[:4]
    paths = [p for n in names for p in sorted((glint_dir / n).iterdir())[:5]]
    fake = np.tile([False, False, False, False, True], len(names))  # the 5th photo of each identity
    table = pd.DataFrame({"identity": [p.parent.name for p in paths], "is_fake": fake, "crop": [str(p) for p in paths]})
    data = TrainData(table, [], names)
    cfg = resolve_config(cli_values={"batch_size": 8, "workers": 0})
    pairs, _ = validation_pairs(data, cfg)
    model = load_onnx_backbone(mfn)
    m = validate(model, data, pairs, cfg, torch.device("cpu"), None)
    emb = _unit(model, np.stack([read_rgb(p) for p in paths]))
    scores = (emb[pairs.a] * emb[pairs.b]).sum(1).astype(np.float64)
    real = pairs.kind != OWN_FAKE
    assert m["eer"] == equal_error_rate(scores, pairs.label).eer
    assert m["eer_real"] == pytest.approx(equal_error_rate(scores[real], pairs.label[real]).eer)
    threshold = equal_error_rate(scores, pairs.label).threshold
    assert m["fake_far"] == pytest.approx(np.mean(scores[~real] >= threshold)) and m["fake_far"] > 0.5


def test_evaluate_takes_the_fine_tuned_onnx_as_model(onnx_run, glint8, tmp_path, capsys):
    _, result = onnx_run
    data, _ = glint8
    photos = sorted(data.rglob("*.png"))
    pairs = pd.DataFrame({
        "img1": [p.relative_to(data).as_posix() for p in photos[0:24:2]],
        "img2": [p.relative_to(data).as_posix() for p in photos[1:24:2][:6] + photos[25:48:4][:6]],
    })
    pairs["label"] = [int(a.split("/")[0] == b.split("/")[0]) for a, b in zip(pairs["img1"], pairs["img2"])]
    assert 0 < pairs["label"].sum() < len(pairs)
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    code = evaluate.main(["--pairs", str(tmp_path / "pairs.csv"), "--root", str(data), "--model",
                          f"onnx:{result.run / 'best.onnx'}", "--aligned", "--device", "cpu", "--workers", "0",
                          "--out", str(tmp_path / "ev"), "--no-progress", "--no-flip"])
    out, err = capsys.readouterr()
    assert code == 0, err
    written = pd.read_csv(tmp_path / "ev" / "scores.csv")
    model = _tuned(result.run, "best.pt")
    a = _unit(model, np.stack([read_rgb(data / p) for p in pairs["img1"]]))
    b = _unit(model, np.stack([read_rgb(data / p) for p in pairs["img2"]]))
    np.testing.assert_allclose(written["similarity"], (a * b).sum(1), atol=2e-3)  # embeddings cached as float16


@pytest.mark.slow
def test_a_killed_onnx_run_resumes_to_the_uninterrupted_weights(onnx_run, mfn, glint8, tmp_path):
    _, reference = onnx_run
    data, work = glint8
    out = tmp_path / "run"
    args = [sys.executable, "-m", "curation.train_on_clean", str(work), "--out", str(out), "--quiet", *_flags(mfn, data)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (out / "state" / "step_00000002.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (out / "state" / "step_00000002.pt").exists(), "the run never saved step 2"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "best.onnx").exists()  # written when a run ends
    assert main(["--out", str(out), "--resume", "--quiet"]) == 0
    a, b = read_checkpoint(out / "last.pt").state_dict, read_checkpoint(reference.run / "last.pt").state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert [r["step"] for r in json.loads((out / "performance_history.json").read_text())] == [0, 2, 4, 6]
    assert (out / "last.onnx").read_bytes() == (reference.run / "last.onnx").read_bytes()


@pytest.mark.slow
def test_torchrun_fine_tunes_the_onnx_embedder_with_both_ranks_in_step(mfn, glint8, tmp_path):
    from curation.training.distributed import fingerprint
    from tests.test_train_ddp import _finished, _torchrun, _weights_printed

    data, work = glint8
    out = tmp_path / "ddp"
    stdout = _finished(_torchrun(str(work), "--out", str(out), *_flags(mfn, data, max_steps=2)))
    printed = _weights_printed(stdout)
    assert printed["rank 0"] == printed["rank 1"] and "distributed: 2 processes (cpu)" in stdout
    assert fingerprint(_tuned(out, "last.pt")).startswith(printed["rank 0"])
    assert stdout.count("best.onnx: onnxruntime vs torch max |diff|") == 1  # rank 0 alone exports
    crops = np.stack([read_rgb(p) for p in sorted(data.rglob("*.png"))[:8]])
    got, _ = make_embedder(f"onnx:{out / 'last.onnx'}", device="cpu").embed(crops)
    assert np.abs(got - _unit(_tuned(out, "last.pt"), crops)).max() <= 1e-4


def test_a_detector_or_a_broken_file_is_refused_in_one_line(glint8, models_dir, tmp_path, capsys):
    _, work = glint8
    scrfd = models_dir / "scrfd_2.5g_bnkps.onnx"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((models_dir / "mobilefacenet.onnx").read_bytes()[:5000])  # a truncated download
    cases = [
        (scrfd, ["face detector, not an embedder", "SCRFD", "--detector scrfd:"]),
        (tmp_path / "missing.onnx", ["no such file"]),
        (broken, ["not a readable ONNX model"]),
    ]
    for i, (path, words) in enumerate(cases):
        code = main([str(work), "--init", f"onnx:{path}", "--out", str(tmp_path / f"r{i}"), "--aligned", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and str(path) in err, err
        assert all(w in err for w in words), err
        assert not (tmp_path / f"r{i}").exists()  # refused before anything was written
    code = main([str(work), "--init", "random", "--input-convention", "adaface", "--out", str(tmp_path / "r9")])
    assert code == 2 and "applies to --init onnx:FILE only" in capsys.readouterr().err


def test_presets_resolve_and_an_unknown_name_lists_them(tmp_path):
    assert load_config("recipe") == {}
    assert resolve_config(file_values=load_config("recipe")) == resolve_config()  # the recipe is the defaults
    for name, values in PRESETS.items():
        cfg = resolve_config(file_values=load_config(name))
        assert all(getattr(cfg, k) == v for k, v in values.items()), name
    tuned = resolve_config(file_values=load_config("finetune-pretrained"), cli_values={"lr": "3e-5"})
    assert tuned.lr == 3e-5 and tuned.flip == PRESETS["finetune-pretrained"].get("flip", False)  # flags win
    with pytest.raises(ConfigError, match="no such preset .*recipe, finetune-pretrained"):
        load_config("finetune")
    (tmp_path / "mine.toml").write_text("lr = 2e-5\n")
    assert load_config(str(tmp_path / "mine.toml")) == {"lr": 2e-5}  # files still work


def test_export_keeps_an_overridden_convention_and_refuses_a_file_that_disagrees(mfn, glint_dir, tmp_path):
    from embeddings.onnx_backbone import OnnxParityError, export_onnx_backbone
    from labels.files import atomic_write

    crops = np.stack([read_rgb(p) for p in sorted(glint_dir.rglob("*.png"))[:6]])
    model = load_onnx_backbone(mfn, "adaface")  # as --input-convention adaface: the file is fed BGR, [-1, 1]
    parity = export_onnx_backbone(model, mfn, tmp_path / "bgr.onnx", crops)
    assert parity.max_abs_diff <= 1e-4 and parity.batch_sizes == (6, 1)
    session = ort_session(tmp_path / "bgr.onnx")
    assert session.get_modelmeta().custom_metadata_map[ONNX_CONVENTION_KEY] == "adaface"
    # independently: the source graph in onnxruntime, fed BGR (x - 127.5) / 127.5 by hand, one crop at a time
    source = ort_session(mfn)
    x = ((crops[..., ::-1].astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    raw = np.concatenate([source.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    got, _ = make_embedder(f"onnx:{tmp_path / 'bgr.onnx'}", device="cpu").embed(crops)
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    # A module that computes something the file does not (a Clip bound is a graph constant, never written back):
    # the check fails loudly and the file is not kept.
    first_clip = next(n for n in onnx.load(str(mfn)).graph.node if n.op_type == "Clip")
    bound = model.net.onnx_tensors()[first_clip.input[2]]  # its max: ReLU6's 6
    assert bound.item() == 6.0
    bound.fill_(1.0)
    with pytest.raises(OnnxParityError, match="differs from the fine-tuned torch module"):
        atomic_write(tmp_path / "bad.onnx", lambda tmp: export_onnx_backbone(model, mfn, tmp, crops))
    assert not list(tmp_path.glob("*bad.onnx*"))
