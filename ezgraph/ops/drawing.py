"""Graphviz's ``dot`` turns DOT text into an SVG or PNG (``ezgraph viz --output``, the
dashboard's run graph). Graphviz is a system package, not a Python one: when ``dot`` is not
installed, :class:`~ezgraph.errors.RenderError` says how to get it."""

from __future__ import annotations

import shutil
import subprocess

from ..errors import RenderError

IMAGE_FORMATS = ("svg", "png")
INSTALL_HINT = (
    "Graphviz's dot is not installed: apt-get install graphviz (Debian/Ubuntu),"
    " brew install graphviz (macOS), or see graphviz.org/download"
)


def graphviz_available() -> bool:
    """True when Graphviz's ``dot`` is on the PATH."""
    return shutil.which("dot") is not None


def draw(dot_text: str, fmt: str, timeout: float = 30.0) -> bytes:
    """``dot_text`` drawn by Graphviz in ``fmt`` (svg or png).

    Raises:
        RenderError: when ``dot`` is missing, fails, or the format is not one of
            :data:`IMAGE_FORMATS`.
    """
    if fmt not in IMAGE_FORMATS:
        raise RenderError(f"cannot draw {fmt!r}: choose one of {', '.join(IMAGE_FORMATS)}")
    program = shutil.which("dot")
    if program is None:
        raise RenderError(INSTALL_HINT)
    try:
        done = subprocess.run(
            [program, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RenderError(f"Graphviz's dot failed: {error}") from None
    if done.returncode != 0:
        message = " ".join(done.stderr.decode(errors="replace").split())
        raise RenderError(f"Graphviz's dot failed: {message}")
    return done.stdout
