"""Run a command of the tool and SIGKILL it at a chosen moment: the fault-injection tests' launcher.

    python -m tests.faults POINT -- MODULE [ARGS...]

POINT is `module:attribute[.attribute]@N:when`: the process kills itself with SIGKILL at the N-th call of that
function, `before` it runs, `after` it returns, or `inside` it (for functions that consume their last argument, an
iterable, inside a transaction: the kill comes when they ask for its second item). The kill is the real signal and the
command is the real command (`MODULE.main(ARGS)`, what `python -m MODULE ARGS` runs): only the moment is chosen, so that
a test can land it inside a transaction or between two writes, which a timer would almost never hit.

Example:
    python -m tests.faults 'labels.store:LabelStore.replace_flag_columns@2:after' -- curation.clean DATA --workdir WORK
"""
from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    """Wrap the function POINT names so that it kills this process at the chosen call (see the module docstring)."""
    target, _, rest = point.partition("@")
    nth, _, when = rest.partition(":")
    module_name, _, attr = target.partition(":")
    nth, when = int(nth or 1), when or "before"
    if when not in ("before", "after", "inside"):
        raise SystemExit(f"bad fault point {point!r}: when must be before, after or inside")
    owner = importlib.import_module(module_name)
    *parents, name = attr.split(".")
    for p in parents:
        owner = getattr(owner, p)
    original = getattr(owner, name)
    calls = 0

    def killing(items):
        for k, item in enumerate(items):
            if k == 1:
                _die()
            yield item

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if when == "inside":
            if calls == nth:
                *head, last = args
                return original(*head, killing(last), **kwargs)
            return original(*args, **kwargs)
        if calls == nth and when == "before":
            _die()
        out = original(*args, **kwargs)
        if calls == nth and when == "after":
            _die()
        return out

    setattr(owner, name, wrapper)


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(__doc__)
    cut = argv.index("--")
    points, (module, *args) = argv[:cut], argv[cut + 1 :]
    command = importlib.import_module(module)  # first, so that a point may name the command's own globals
    for point in points:
        arm(point)
    sys.exit(command.main(args))


if __name__ == "__main__":
    main(sys.argv[1:])
