"""How commands report problems: a user's mistake is one line and exit code 2; a bug keeps its traceback."""
from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from curation import clean
from labels.cli import UserError, command_parser, run_cli, run_command

from tests.conftest import REPO


def test_a_user_error_is_one_line_and_exit_code_2(capsys):
    def body():
        raise UserError("photos/meta.json: line 3: not JSON")

    assert run_cli(body) == 2
    err = capsys.readouterr().err
    assert err == "error: photos/meta.json: line 3: not JSON\n"


def test_every_package_error_is_a_user_error():
    from curation.flagging import FlagError
    from curation.training.config import ConfigError
    from curation.training.data import TrainError
    from embeddings.checkpoints import CheckpointError
    from embeddings.detectors import DetectorError
    from labels.export import ExportError
    from labels.layouts import LayoutError
    from labels.store import StoreError

    for cls in (FlagError, ConfigError, TrainError, CheckpointError, DetectorError, ExportError, LayoutError, StoreError):
        assert issubclass(cls, UserError), cls


def test_a_bug_is_not_dressed_up_as_a_user_error(capsys):
    def body():
        return {}["missing"]

    with pytest.raises(KeyError):
        run_cli(body)

    def bad_value():
        raise ValueError("an internal invariant broke")  # a plain ValueError is a bug, not bad input

    with pytest.raises(ValueError, match="invariant"):
        run_cli(bad_value)
    assert capsys.readouterr().err == ""


def test_os_errors_about_the_users_paths_are_one_line_others_raise(tmp_path, capsys):
    def unwritable():
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out.csv"))

    assert run_cli(unwritable) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'out.csv'}: Permission denied\n"

    def broken_pipe():
        raise OSError(errno.EPIPE, "Broken pipe")

    with pytest.raises(OSError):
        run_cli(broken_pipe)


def test_interrupt_says_how_to_resume_and_exits_130(capsys):
    def body():
        raise KeyboardInterrupt

    assert run_cli(body, interrupted="run it again", prefix="rank 1: ") == 130
    assert capsys.readouterr().err.strip() == "rank 1: interrupted: run it again"


def test_run_command_parses_then_runs(capsys):
    parser = command_parser("python -m demo", "A demo.", "examples:\n  python -m demo 3")
    parser.add_argument("n", type=int)
    assert run_command(parser, ["3"], lambda args: args.n - 3) == 0
    with pytest.raises(SystemExit) as exc:  # argparse's own errors keep argparse's exit code
        run_command(parser, ["x"], lambda args: 0)
    assert exc.value.code == 2
    assert "examples:\n  python -m demo 3" in parser.format_help()  # the epilog is kept as written


def test_clean_shows_the_traceback_of_an_internal_bug(tmp_path, monkeypatch):
    """Before, `curation.clean` caught every ValueError and OSError and printed it as a user's mistake."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "emb.npy", rng.normal(size=(6, 8)).astype(np.float32))
    pd.DataFrame({"image": [f"p{i}.jpg" for i in range(6)], "identity": ["a"] * 3 + ["b"] * 3}).to_csv(
        tmp_path / "index.csv", index=False)

    def broken(*args, **kwargs):
        raise ValueError("shapes (3,8) and (4,8) not aligned")  # what a bug in the graph code would raise

    monkeypatch.setattr(clean, "flag_embeddings", broken)
    with pytest.raises(ValueError, match="not aligned"):
        clean.main(["--embeddings", str(tmp_path / "emb.npy"), "--index", str(tmp_path / "index.csv"),
                    "--workdir", str(tmp_path / "w"), "--no-progress"])


def test_a_command_prints_a_bad_input_as_one_line(tmp_path):
    (tmp_path / "index.csv").write_text("image,identity\na.jpg,x\n")
    np.save(tmp_path / "emb.npy", np.zeros((2, 4), np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "curation.clean", "--embeddings", str(tmp_path / "emb.npy"), "--index",
         str(tmp_path / "index.csv"), "--workdir", str(tmp_path / "w"), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "index.csv has 1 rows but" in lines[0]
