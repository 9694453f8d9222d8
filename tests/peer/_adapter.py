"""Run a peer library's own test file against dask-em, with only its imports swapped.

The peers' test files are read from the installed packages (never copied
into this repository), the import lines named in ``swaps`` are replaced
line for line, and the module is executed under the peer's package name so
its relative imports of test helpers still work. A test module then
exposes the suite's tests to pytest with :func:`expose`.

Tests that cannot apply (they call a peer's private functions) are listed
with their reasons in :mod:`peer_skips` and marked skipped by
``conftest.py``; nothing else is changed.
"""

from __future__ import annotations

import importlib.util
import re
import types
from typing import Any


def load_suite(module_name: str, swaps: dict[str, str]) -> types.ModuleType:
    """Load the installed test module ``module_name`` with whole import lines swapped.

    Parameters
    ----------
    module_name : str
        Dotted name of the peer's test module, e.g. ``"hmmlearn.tests.test_gaussian_hmm"``.
    swaps : dict of str to str
        Whole lines of the file and their replacements. Every line must be
        found, so a changed peer release fails loudly instead of silently
        testing the peer against itself.
    """
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the test module {module_name} is not installed")
    with open(spec.origin, encoding="utf-8") as f:
        source = f.read()
    for old, new in swaps.items():
        source, n = re.subn(rf"^{re.escape(old)}$", new, source, flags=re.MULTILINE)
        if n == 0:
            raise LookupError(f"{spec.origin} has no line {old!r} to swap; update the adapter for this release")
    module = types.ModuleType(module_name)
    module.__file__ = spec.origin
    module.__package__ = module_name.rpartition(".")[0]
    exec(compile(source, spec.origin, "exec"), module.__dict__)  # noqa: S102 - the installed peer's own tests
    return module


def expose(module: types.ModuleType, namespace: dict[str, Any]) -> list[str]:
    """Copy the test classes and functions of ``module`` into ``namespace`` (a test module's globals)."""
    names = [name for name in vars(module) if name.startswith(("Test", "test_"))]
    for name in names:
        namespace[name] = getattr(module, name)
    return names


def skip_reason(nodeid: str, skips: dict[str, str]) -> str | None:
    """The listed reason to skip a test, matched on ``Class::test``, ``test`` or either with its ``[param]``.

    A key holding ``*`` is a pattern (``fnmatch``, ``*`` only) on the
    test's name with its parameters, e.g. ``"*[*MiniBatchKMeans*"``.
    """
    parts = nodeid.split("::")[1:]
    name = parts[-1]
    bare = name.split("[")[0]
    candidates = [name, bare]
    if len(parts) > 1:
        candidates = [f"{parts[-2]}::{name}", f"{parts[-2]}::{bare}", *candidates]
    for key in candidates:
        if key in skips:
            return skips[key]
    for key, reason in skips.items():
        if "*" in key and re.fullmatch(".*".join(map(re.escape, key.split("*"))), name):
            return reason
    return None
