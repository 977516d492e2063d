"""Python side of ``sse-gateway``: the client of its internal API, a Flask
integration (``sse_gateway.flask``), a pytest fixture (``sse_gateway.testing``)
and, installed with the package, the ``sse-gateway`` binary itself.

- :class:`Client`: ``send``, ``publish``, ``streams``, ``close``; errors raise
  :class:`GatewayError` with the gateway's status and code.
- :class:`ConnectionManager` / :class:`CallbackHandler`: the backend side of
  the callback contract, framework-free (the Rust toolkit's behaviour).
- ``python -m sse_gateway --help``: the binary's options.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .binary import GatewayBinaryNotFound, binary_path
from .callback import CallbackError, CallbackHandler, request_id_of
from .client import Client, GatewayError, GatewayUnreachable, StreamInfo
from .connections import INSTANCE_LOST, LOCAL_USER, ConnectionInfo, ConnectionManager, Identity

__all__ = [
    "CallbackError",
    "CallbackHandler",
    "Client",
    "ConnectionInfo",
    "ConnectionManager",
    "GatewayBinaryNotFound",
    "GatewayError",
    "GatewayUnreachable",
    "Identity",
    "INSTANCE_LOST",
    "LOCAL_USER",
    "StreamInfo",
    "binary_path",
    "request_id_of",
]

try:
    __version__ = _version("sse-gateway")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"
