"""Turning arbitrary exceptions into the short, one-line reasons our messages embed."""

from __future__ import annotations

import socket

_MAX = 200


def reason(exc: BaseException | object) -> str:
    """One line, at most ~200 characters, never empty."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, EOFError):
        return "the data ends early (truncated file?)"
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= _MAX else text[: _MAX - 3] + "..."
