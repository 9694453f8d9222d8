"""A per-iteration progress display for EM fits.

:class:`Progress` is a callback for :func:`dask_em.fit_em` (it takes a
:class:`dask_em.engine.IterationInfo`). It picks its output from where it
runs:

- a terminal: one live line, rewritten in place each iteration;
- Jupyter: one output area updated in place (through IPython's display,
  which Jupyter always has), plain text;
- anything else (a pipe, a log file, CI): one plain line per iteration.

No dependency beyond the standard library.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "dashboard_message", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """Seconds as ``12.3s``, ``4m05s`` or ``2h03m``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m{s:02d}s"
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h}h{m:02d}m"


def _in_jupyter() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class Progress:
    """Show iteration, log-likelihood, change, seconds per iteration and ETA.

    Parameters
    ----------
    stream : file-like, optional
        Where to write; standard error by default.
    mode : {"auto", "tty", "lines", "jupyter"}
        How to display. ``auto`` picks ``tty`` when ``stream`` is a
        terminal, ``jupyter`` inside a Jupyter kernel, else ``lines``.
    label : str
        Prefix of every line, e.g. the model being fitted.

    Examples
    --------
    >>> from dask_em import fit_em
    >>> from dask_em.progress import Progress
    >>> fit_em(model, "data.zarr", callbacks=[Progress()])  # doctest: +SKIP
    """

    def __init__(self, stream: TextIO | None = None, mode: str = "auto", label: str = "") -> None:
        if mode not in ("auto", "tty", "lines", "jupyter"):
            raise ValueError(f"mode must be 'auto', 'tty', 'lines' or 'jupyter', got {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", lambda: False)
            if _in_jupyter():
                mode = "jupyter"
            elif isatty() and os.environ.get("TERM") != "dumb":
                mode = "tty"
            else:
                mode = "lines"
        self.mode = mode
        self.label = label
        self._seconds: list[float] = []
        self._drawn = False
        self._handle: Any = None
        self._started = time.perf_counter()

    def format(self, info: Any) -> str:
        """The text of one progress line for ``info`` (an IterationInfo)."""
        self._seconds.append(float(info.seconds))
        # The first iteration carries one-off costs (loading, compiling);
        # later ones predict the rest better.
        recent = self._seconds[1:][-10:] or self._seconds
        per_iter = sum(recent) / len(recent)
        remaining = max(int(info.max_iter) - int(info.iteration), 0)
        width = len(str(info.max_iter))
        change = "" if not math.isfinite(info.change) else f"{info.change:+.3e}"
        prefix = f"{self.label}  " if self.label else ""
        return (
            f"{prefix}iter {info.iteration:>{width}}/{info.max_iter}  "
            f"loglik {info.value: .6e}  change {change:>10}  "
            f"{info.seconds:6.2f} s/it  eta {format_seconds(per_iter * remaining)} (max_iter)"
        )

    def __call__(self, info: Any) -> None:
        line = self.format(info)
        if self.mode == "tty":
            # Move back onto the previous progress line, clear it, rewrite
            # it, and always end with a newline so that anything printed
            # after the fit starts on a fresh line.
            up = "\x1b[1A\r\x1b[2K" if self._drawn else ""
            self.stream.write(f"{up}{line}\n")
            self._drawn = True
        elif self.mode == "jupyter":
            self._jupyter(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _jupyter(self, line: str) -> None:
        try:
            from IPython.display import display

            if self._handle is None:
                self._handle = display({"text/plain": line}, raw=True, display_id=True)
            else:
                self._handle.update({"text/plain": line}, raw=True)
        except Exception:  # no usable display: plain lines
            self.mode = "lines"
            self.stream.write(line + "\n")

    def message(self, text: str) -> None:
        """Write a line of text that the next progress update will not overwrite."""
        self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = False

    def close(self) -> None:
        """Nothing to undo: every update already ends with a newline."""
        self._drawn = False


def dashboard_message(client: Any) -> str:
    """A one-line message with the scheduler address and its dashboard link."""
    link = getattr(client, "dashboard_link", None)
    try:
        address = client.scheduler.address
    except AttributeError:
        address = "?"
    return f"dask-em: scheduler {address}" + (f", dashboard at {link}" if link else "")
