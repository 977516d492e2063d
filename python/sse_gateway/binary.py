"""Where the ``sse-gateway`` binary is: the one this package installed (next
to the Python interpreter, in the venv's ``bin/``), else ``$SSE_GATEWAY_BIN``
when set, else the first on ``PATH``."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["binary_path", "GatewayBinaryNotFound"]

BINARY_NAME = "sse-gateway"


class GatewayBinaryNotFound(FileNotFoundError):
    """No ``sse-gateway`` binary could be found."""


def binary_path() -> str:
    """The path of the ``sse-gateway`` binary. ``$SSE_GATEWAY_BIN`` wins (a
    binary built with ``cargo build``); then the interpreter's own ``bin/``
    (where ``pip install`` put it); then ``PATH``."""
    explicit = os.environ.get("SSE_GATEWAY_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise GatewayBinaryNotFound(f"SSE_GATEWAY_BIN={explicit!r} is not an executable file")
        return explicit
    beside = Path(sys.executable).parent / BINARY_NAME
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(BINARY_NAME)
    if found:
        return found
    raise GatewayBinaryNotFound(
        f"{BINARY_NAME} not found next to {sys.executable} nor on PATH; "
        "install this package (pip install ./python) or set SSE_GATEWAY_BIN"
    )
