"""``python -m sse_gateway [ARGS...]`` runs the installed ``sse-gateway``
binary with ``ARGS`` (``python -m sse_gateway --help`` prints its options:
every setting with its flag, variable and default)."""

from __future__ import annotations

import os
import sys

from .binary import GatewayBinaryNotFound, binary_path


def main() -> None:
    """Replaces this process with the gateway binary."""
    try:
        path = binary_path()
    except GatewayBinaryNotFound as e:
        print(f"sse_gateway: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    os.execv(path, [path, *sys.argv[1:]])


if __name__ == "__main__":
    main()
