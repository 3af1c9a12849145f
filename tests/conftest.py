"""Fixtures shared by the whole suite.

Real photos and models come from ../shared (see ../shared/README.md); every test that needs them skips with a clear
reason when that folder is absent. Nothing in the product reads ../shared.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACECUR_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the calling test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared test material is not beside the repository)")
    return path


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    """Unaligned 150x150 LFW photos, one folder per person (423 people, 5-40 photos each)."""
    return shared_path("faces", "lfw")


@pytest.fixture(scope="session")
def glint_dir() -> Path:
    """Photos already aligned to the ArcFace 112x112 template; folder names contain spaces."""
    return shared_path("faces", "glint24")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return shared_path("models")


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    return shared_path("spec")


def copy_identities(src: Path, dst: Path, names: list[str], per_identity: int | None = None) -> Path:
    """Copy a few identity folders (optionally only their first photos) into a test dataset folder."""
    for name in names:
        (dst / name).mkdir(parents=True, exist_ok=True)
        for photo in sorted((src / name).iterdir())[:per_identity]:
            shutil.copy2(photo, dst / name / photo.name)
    return dst


def ingested_glint(glint_dir: Path, tmp_path_factory, identities: int, per_identity: int) -> tuple[Path, Path]:
    """(dataset folder, work folder): the first `identities` glint24 identities x `per_identity` photos, ingested."""
    from labels.ingest import ingest

    names = sorted(p.name for p in glint_dir.iterdir() if p.is_dir())[:identities]
    data = copy_identities(glint_dir, tmp_path_factory.mktemp(f"glint{identities}"), names, per_identity=per_identity)
    work = tmp_path_factory.mktemp("work")
    ingest(data, work, progress=False)
    return data, work


@pytest.fixture(scope="module")
def glint_work(glint_dir, tmp_path_factory):
    """A work folder with 6 glint24 identities x 4 aligned photos, ingested once per test module (the training tests)."""
    return ingested_glint(glint_dir, tmp_path_factory, 6, 4)[1]


def rendered(markdown: str) -> str:
    """The text a Markdown source shows once the app's escaping is undone as CommonMark undoes it: a backslash before a
    punctuation mark disappears, a trailing-two-spaces line break is a newline, and the invisible word joiners the app
    puts where autolinking would start (review_pages.common.lit) are dropped."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "").replace("  \n", "\n")
