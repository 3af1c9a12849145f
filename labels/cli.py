"""How every command of the project reports a problem: a user's mistake is one line and exit code 2, a bug a traceback.

Why here, at the bottom of the import graph: the errors a user can cause are raised in every package (a corrupt
`meta.json` in `labels`, a checkpoint of the wrong architecture in `embeddings`, a bad option in `curation`), so their
common base must be importable from all of them, and `labels` imports nothing of the project's but itself.

Rules:
- Raise `UserError` (or a subclass: `StoreError`, `LayoutError`, `CheckpointError`, ...) for anything the user can fix:
  the message names the file or option and the reason.
- A command's `main(argv)` is `run_command(parser, argv, run)`: it parses the arguments and hands the rest to
  `run_cli`, which prints a `UserError` as `error: <message>` (exit 2), an interrupt as one line (exit 130), and lets
  everything else raise with its traceback: a bug must never be dressed up as a user's mistake.

Example:
    >>> def main(argv=None) -> int:
    ...     parser = command_parser("python -m curation.predict", "Score every pair ...", EPILOG)
    ...     parser.add_argument("test_dir")
    ...     return run_command(parser, argv, run, interrupted="run the same command again to resume")
"""
from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Sequence

# OS errors that say something about the user's machine or paths (a read-only or full disk, a missing folder, no
# permission), not about the code: reported in one line naming the file.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC, errno.EROFS, errno.EDQUOT,
     errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG, errno.EMFILE}
)


class UserError(ValueError):
    """A problem the user can fix (a file, a folder, an option): printed as one line, exit code 2.

    A ValueError, so that library callers who catch ValueError for bad arguments keep working.
    """


def environment_error(exc: OSError) -> str | None:
    """The one-line message for an OSError caused by the user's paths or machine, None for any other OSError."""
    if exc.errno not in _ENVIRONMENT_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else "a file"
    return f"{where}: {exc.strerror or exc}"


def run_cli(body: Callable[[], int | None], *, interrupted: str = "", prefix: str = "") -> int:
    """Run a command's body and turn its outcome into an exit code.

    Inputs: `body`, the command after argument parsing; `interrupted`, what to tell the user after Ctrl-C (e.g. how to
    resume); `prefix`, put in front of every message (e.g. "rank 1: " under torchrun).
    Output: body's return value (None counts as 0); 2 after a UserError or an OSError about the user's paths (one
    line on stderr); 130 after KeyboardInterrupt. Anything else propagates with its traceback.
    """
    try:
        code = body()
    except KeyboardInterrupt:
        print(f"\n{prefix}interrupted" + (f": {interrupted}" if interrupted else ""), file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        message = environment_error(exc)
        if message is None:
            raise
        print(f"{prefix}error: {message}", file=sys.stderr)
        return 2
    return 0 if code is None else int(code)


def command_parser(prog: str, description: str, epilog: str = "", **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser as every command has it: `prog` as the user types it, the epilog's examples kept as written."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def run_command(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, body: Callable[[argparse.Namespace], int | None],
    *, interrupted: str = "",
) -> int:
    """Parse `argv` with `parser` (argparse exits 2 on its own errors), then `run_cli(body(args))`."""
    args = parser.parse_args(argv)
    return run_cli(lambda: body(args), interrupted=interrupted)
