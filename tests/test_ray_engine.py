"""The embedding pass on Ray Data (`engine="ray"`) against the local pass, on a real local Ray (2 CPUs).

The Ray pass must give the same statuses, methods, crops and embeddings as the local pass on the same photos, and
leave the same caches: a local run over the Ray pass's cache computes nothing, and a Ray pass over a cache that a local
run half filled computes only the rest. One Ray session serves the module (starting Ray costs ~5 s here, each pass
~10 s more for its actors to import torch and load the models); the local passes are the reference.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curation import clean
from curation.flagging.noise import list_identities
from embeddings.cache import crop_path, read_crop
from embeddings.embedders import make_embedder
from embeddings.options import EmbedOptions
from embeddings.pipeline import align_images, embed_images

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-ray.txt)")
ray_engine = pytest.importorskip("embeddings.ray_engine")
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data"),  # Ray copying its own settings
    pytest.mark.slow,  # Ray starts actors for a few seconds each time
]


@pytest.fixture(scope="module")
def ray_session():
    ray_engine.init_ray(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def onnx_spec(models_dir):
    return f"onnx:{models_dir / 'mobilefacenet.onnx'}"


@pytest.fixture()
def photos(lfw_dir, tmp_path):
    """8 LFW photos (dlib finds their faces), then a file that is not an image and a blank image (no face)."""
    lfw = [sorted(person.glob("*.jpg"))[0] for person in sorted(lfw_dir.iterdir())[:8]]
    (tmp_path / "text.jpg").write_bytes(b"this is not a JPEG")
    Image.new("RGB", (150, 150), (128, 128, 128)).save(tmp_path / "blank.png")
    return [*lfw, tmp_path / "text.jpg", tmp_path / "blank.png"]


def test_ray_pass_equals_local_pass_and_shares_its_caches(ray_session, onnx_spec, photos, tmp_path):
    embedder = make_embedder(onnx_spec, device="cpu")
    local = embed_images(photos, embedder, cache_dir=tmp_path / "local",
                         options=EmbedOptions(workers=0, progress=False))
    assert local.counts() == {"ok": 8, "unreadable": 1, "no_face": 1}

    cache = tmp_path / "ray"
    local_options = EmbedOptions(workers=0, progress=False)
    align_images(photos[:3], cache_dir=cache, options=local_options)  # crops only: Ray reads them back
    embed_images(photos[3:5], embedder, cache_dir=cache, options=local_options)  # done: Ray skips them
    on_ray = embed_images(photos, embedder, cache_dir=cache,
                          options=EmbedOptions(batch_size=4, engine="ray", progress=False))
    assert on_ray.status == local.status and on_ray.method == local.method and on_ray.keys == local.keys
    assert (on_ray.aligned_now, on_ray.embedded_now) == (4, 6)  # photos 5-7 + the blank one; 0-2 and 5-7
    ok = np.array(local.status) == "ok"
    np.testing.assert_allclose(on_ray.embeddings[ok], local.embeddings[ok], atol=1e-3)  # float16 storage
    np.testing.assert_allclose(on_ray.norms[ok], local.norms[ok], rtol=1e-5)
    assert np.isnan(on_ray.embeddings[~ok]).all()
    for key in np.array(local.keys)[ok]:  # the actors wrote the crops into the shared cache folder
        np.testing.assert_array_equal(read_crop(crop_path(cache, on_ray.align_id, key)),
                                      read_crop(crop_path(tmp_path / "local", local.align_id, key)))

    again = embed_images(photos, embedder, cache_dir=cache, options=EmbedOptions(workers=0, progress=False))
    assert (again.aligned_now, again.embedded_now) == (0, 0)
    assert again.status == local.status
    np.testing.assert_array_equal(again.embeddings[ok], on_ray.embeddings[ok])


def test_clean_cli_with_ray_engine_then_local_resumes(ray_session, onnx_spec, lfw_dir, tmp_path, capsys):
    data = tmp_path / "data"
    for name in sorted(list_identities(lfw_dir, 10))[:3]:
        (data / name).mkdir(parents=True)
        for p in sorted((lfw_dir / name).iterdir())[:4]:
            (data / name / p.name).write_bytes(p.read_bytes())
    argv = [str(data), "--workdir", str(tmp_path / "w"), "--model", onnx_spec, "--device", "cpu", "--no-progress"]
    assert clean.main([*argv, "--engine", "ray"]) == 0
    assert "12 ok (12 aligned, 12 embedded in this run by " in capsys.readouterr().out
    flags = pd.read_csv(tmp_path / "w" / "flags.csv", keep_default_na=False)
    assert clean.main([*argv, "--engine", "local"]) == 0
    assert "12 ok (0 aligned, 0 embedded in this run)" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "w" / "flags.csv", keep_default_na=False), flags)


def test_bad_engine_settings_are_clear_errors(onnx_spec, photos, tmp_path):
    embedder = make_embedder(onnx_spec, device="cpu")
    with pytest.raises(ValueError, match="unknown engine 'spark': use one of local, ray"):
        embed_images(photos[:1], embedder, cache_dir=tmp_path, options=EmbedOptions(engine="spark", progress=False))
    in_memory = dataclasses.replace(embedder, spec="")  # e.g. torch_embedder over a model being trained
    with pytest.raises(ValueError, match="rebuilds the embedder in each actor from its spec"):
        embed_images(photos[:1], in_memory, cache_dir=tmp_path, options=EmbedOptions(engine="ray", progress=False))
