"""pytest support: start the real ``sse-gateway`` binary for a test.

Installed as a pytest plugin (entry point ``pytest11``), so the ``gateway``
fixture is available in any test suite of a venv where this package is
installed::

    def test_stream(gateway, app_url):
        gw = gateway(f"{app_url}/api/sse/callback", DEFAULT_BINDINGS="broadcast")
        ...  # gw.url (streams), gw.internal_url, gw.client (a Client)
        gw.stop()  # optional: every gateway still running is stopped at teardown

The gateway listens on free ports (``LISTEN_ADDR=127.0.0.1:0``,
``INTERNAL_LISTEN=127.0.0.1:0``); the fixture learns them from the lines the
binary prints on stdout. It is stopped with SIGTERM and must exit 0 (its
graceful drain); anything else fails the test with the gateway's log.
Outside pytest, :func:`start_gateway` does the same.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, Iterator, List, Optional

import pytest
import requests

from .binary import binary_path
from .client import Client

__all__ = [
    "GatewayProcess",
    "GatewayStartError",
    "SSEEvent",
    "SSEStream",
    "WSGIServer",
    "gateway",
    "open_stream",
    "serve_wsgi",
    "start_gateway",
]

_LINE = re.compile(r"(internal listener|listening) on (https?://\S+)")

#: Variables passed through from the test's environment; everything else the
#: gateway reads comes from the fixture's arguments only, so a stray
#: ``CALLBACK_URL`` or ``PORT`` in a developer's shell cannot change a test.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "HOSTNAME", "RUST_LOG", "RUST_BACKTRACE")

DEFAULT_STARTUP_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 30.0


class GatewayStartError(RuntimeError):
    """The gateway exited or printed no listening line in time."""


class GatewayProcess:
    """A running gateway: ``url`` (public listener: streams, ``/internal/send``),
    ``internal_url`` (internal listener: publish, admin, metrics), ``client``
    (a :class:`Client` on ``internal_url``), ``process``."""

    def __init__(self, process: "subprocess.Popen[bytes]", url: str, internal_url: str, log: IO[bytes]) -> None:
        self.process = process
        self.url = url
        self.internal_url = internal_url
        self.client = Client(internal_url)
        self._log = log

    @property
    def pid(self) -> int:
        """The gateway's process id."""
        return self.process.pid

    def log_text(self) -> str:
        """Everything the gateway wrote on stderr so far (its log)."""
        self._log.flush()
        with open(self._log.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def running(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for the exit; the exit code must be 0 (a clean
        drain), else :class:`AssertionError` with the log. Killed (and an
        error raised) if it has not exited within ``timeout`` seconds."""
        self.client.close_session()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"sse-gateway did not exit {timeout} s after SIGTERM\n{self.log_text()}")
        code = self.process.returncode
        if code != 0:
            raise AssertionError(f"sse-gateway exited with {code}\n{self.log_text()}")
        return code

    def __enter__(self) -> "GatewayProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running():
            self.stop()


def _read_lines(stream: IO[bytes], out: "queue.Queue[Optional[str]]") -> None:
    for raw in iter(stream.readline, b""):
        out.put(raw.decode("utf-8", "replace"))
    out.put(None)


def _wait_accepting(url: str, deadline: float) -> None:
    host, _, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise GatewayStartError(f"nothing accepts connections on {url}") from None
            time.sleep(0.05)


def start_gateway(
    callback_url: Optional[str] = None,
    *,
    binary: Optional[str] = None,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    **settings: object,
) -> GatewayProcess:
    """Starts ``sse-gateway`` on free loopback ports with ``CALLBACK_URL`` =
    ``callback_url`` and the other ``settings`` (environment variable names,
    e.g. ``DEFAULT_BINDINGS="broadcast"``, ``INTERNAL_API_SECRET="s"``), and
    returns once both listeners accept connections."""
    env: Dict[str, str] = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("RUST_LOG", "info")
    env["LISTEN_ADDR"] = "127.0.0.1:0"
    env["INTERNAL_LISTEN"] = "127.0.0.1:0"
    if callback_url is not None:
        env["CALLBACK_URL"] = callback_url
    env.update({k: str(v) for k, v in settings.items()})
    log = tempfile.NamedTemporaryFile(prefix="sse-gateway-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [binary or binary_path()], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
    )
    assert process.stdout is not None
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True, name="sse-gateway-stdout").start()
    deadline = time.monotonic() + startup_timeout
    found: Dict[str, str] = {}
    try:
        while "listening" not in found:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise GatewayStartError(f"sse-gateway printed no listening line within {startup_timeout} s") from None
            if line is None:
                raise GatewayStartError(f"sse-gateway exited with {process.wait()} before listening")
            m = _LINE.search(line)
            if m:
                found[m.group(1)] = m.group(2).rstrip("/")
        if "internal listener" not in found:
            raise GatewayStartError("sse-gateway printed no internal listener line")
        for url in found.values():
            _wait_accepting(url, deadline)
    except GatewayStartError as e:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.flush()
        with open(log.name, "rb") as f:
            raise GatewayStartError(f"{e}\n{f.read().decode('utf-8', 'replace')}") from None
    return GatewayProcess(process, found["listening"], found["internal listener"], log)


@pytest.fixture
def gateway() -> Iterator[Callable[..., GatewayProcess]]:
    """A factory: ``gateway(callback_url=None, **settings)`` starts a real
    gateway (see :func:`start_gateway`). Every one still running at teardown
    is stopped with SIGTERM and must exit 0."""
    started: List[GatewayProcess] = []

    def start(callback_url: Optional[str] = None, **settings: Any) -> GatewayProcess:
        gw = start_gateway(callback_url, **settings)
        started.append(gw)
        return gw

    yield start
    errors = []
    for gw in started:
        try:
            if gw.running():
                gw.stop()
        except AssertionError as e:
            errors.append(str(e))
        finally:
            gw._log.close()
            os.unlink(gw._log.name)
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@dataclass(frozen=True)
class SSEEvent:
    """One event read from a stream: ``event`` (``"message"`` when unnamed),
    ``data`` (the ``data:`` lines joined with ``\\n``), ``id``, ``retry``."""

    event: str
    data: str
    id: Optional[str] = None
    retry: Optional[int] = None

    def json(self) -> Any:
        """``data`` decoded as JSON (for the gateway's envelope
        ``{"type":<name>,"payload":<data>}``)."""
        return json.loads(self.data)


class SSEStream:
    """A real SSE stream over HTTP (``requests`` with ``stream=True``),
    parsed as the WHATWG rules say; comments (heartbeats) are skipped.
    ``retry:`` lines alone (no data) are reported as events named
    ``"retry"`` so a test can see the gateway's retry hints."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        self.headers = response.headers
        self._chunks = response.iter_content(chunk_size=None)
        self._buffer = b""
        self._ended = False

    def _line(self) -> Optional[str]:
        while True:
            cr, lf = self._buffer.find(b"\r"), self._buffer.find(b"\n")
            i = min(x for x in (cr, lf, len(self._buffer)) if x >= 0)
            if i < len(self._buffer) and not (i == cr and i == len(self._buffer) - 1):
                # a CR at the very end may be the first half of CRLF: read on
                end = i + 2 if self._buffer[i : i + 2] == b"\r\n" else i + 1
                line, self._buffer = self._buffer[:i], self._buffer[end:]
                return line.decode("utf-8", "replace")
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._ended = True
                return None
            self._buffer += chunk

    def next_event(self) -> Optional[SSEEvent]:
        """The next event; None when the stream ended. A read that waits
        longer than the stream's ``read_timeout`` raises
        ``requests.exceptions.ConnectionError``."""
        name = ""
        data: List[str] = []
        ident: Optional[str] = None
        retry: Optional[int] = None
        while True:
            line = self._line()
            if line is None:
                return None
            if line == "":
                if data:
                    return SSEEvent(name or "message", "\n".join(data), ident, retry)
                if retry is not None:
                    return SSEEvent("retry", "", ident, retry)
                name = ""
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                ident = value
            elif field == "retry" and value.isdigit():
                retry = int(value)

    def events(self) -> Iterator[SSEEvent]:
        """Every event until the stream ends."""
        while True:
            ev = self.next_event()
            if ev is None:
                return
            yield ev

    def until(self, event: str) -> List[SSEEvent]:
        """Reads up to and including the first event named ``event``; returns
        them all. :class:`AssertionError` if the stream ends first."""
        seen = []
        for ev in self.events():
            seen.append(ev)
            if ev.event == event:
                return seen
        raise AssertionError(f"the stream ended before {event!r}; got {seen!r}")

    @property
    def ended(self) -> bool:
        """Whether the server ended the stream (seen by a read)."""
        return self._ended

    def close(self) -> None:
        """Closes the connection (the gateway then reports ``client_closed``)."""
        self.response.close()

    def __enter__(self) -> "SSEStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stream(url: str, *, read_timeout: float = 10.0, headers: Optional[Dict[str, str]] = None) -> SSEStream:
    """Opens an SSE stream at ``url`` (e.g. ``f"{gw.url}/stream?request_id=abc"``)."""
    response = requests.get(
        url,
        stream=True,
        timeout=(5.0, read_timeout),
        headers={"Accept": "text/event-stream", **(headers or {})},
    )
    return SSEStream(response)


class WSGIServer:
    """A WSGI server on a free loopback port, in a thread (see
    :func:`serve_wsgi`). ``url`` is known before ``app`` is set, so a test can
    start the gateway with ``CALLBACK_URL`` first and then build the app with
    the gateway's URL; until ``app`` is set every request gets 503."""

    def __init__(self, url: str, app: Any = None) -> None:
        self.url = url
        self.app = app

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"no app yet"]
        return self.app(environ, start_response)


@contextmanager
def serve_wsgi(app: Any = None, host: str = "127.0.0.1") -> Iterator[WSGIServer]:
    """Serves a WSGI app (a Flask app) on a free port in a thread, threaded
    (the gateway's callbacks and the test's requests run concurrently);
    yields the :class:`WSGIServer` (``.url``, settable ``.app``) and shuts it
    down afterwards."""
    from werkzeug.serving import make_server

    front = WSGIServer("", app)
    server = make_server(host, 0, front, threaded=True)
    front.url = f"http://{host}:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, name="wsgi-server", daemon=True)
    thread.start()
    try:
        yield front
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
