"""Run a peer library's installed test module against dask-em's classes.

The test file is read from the installed package, a few import lines are
swapped for dask-em's (each must be found exactly once, so a change in the
peer's file fails loudly rather than silently testing the peer), and the
result is executed as a fresh module compiled under the original file name,
so tracebacks point at the peer's real lines. Nothing is copied into this
repository; the skipped tests and their reasons are in ``skips.py``.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path


def load_peer_module(module: str, swaps: dict[str, str], name: str | None = None) -> types.ModuleType:
    """Execute the installed test module ``module`` with its imports swapped.

    Parameters
    ----------
    module : str
        Dotted name of the peer's test module, e.g.
        ``"sklearn.mixture.tests.test_gaussian_mixture"``.
    swaps : dict of str to str
        Each key is a whole line of the peer's file (without its newline)
        and each value the line that replaces it.
    name : str, optional
        Name of the new module (default: ``"peer_" + last part of module``).

    Returns
    -------
    module
        The executed module; its test functions and fixtures are what the
        caller hands to pytest (``globals().update(vars(module))``).
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find the installed test module {module!r}; install the peer package")
    path = Path(spec.origin)
    lines = path.read_text().splitlines()
    for old, new in swaps.items():
        hits = [i for i, line in enumerate(lines) if line == old]
        if len(hits) != 1:
            raise AssertionError(f"{path}: expected the line {old!r} once, found it {len(hits)} times")
        lines[hits[0]] = new  # one line for one, so line numbers stay the peer's
    new_module = types.ModuleType(name or "peer_" + module.rsplit(".", 1)[-1])
    new_module.__file__ = str(path)
    new_module.__package__ = module.rsplit(".", 1)[0]  # its relative imports still resolve
    exec(compile("\n".join(lines) + "\n", str(path), "exec"), new_module.__dict__)
    return new_module


def peer_tests(module: str, swaps: dict[str, str]) -> dict[str, object]:
    """The names a test file of ours takes over from the peer's module (not its dunders).

    Use as ``globals().update(peer_tests(...))``: pytest then collects the
    peer's test functions, classes and fixtures from our file.
    """
    loaded = load_peer_module(module, swaps)
    return {k: v for k, v in vars(loaded).items() if not (k.startswith("__") and k.endswith("__"))}
