"""The example app against the real gateway binary.

The ``gateway`` fixture comes from the ``sse-gateway`` package's pytest
plugin; ``serve_wsgi`` and ``open_stream`` from ``sse_gateway.testing``.
"""

from __future__ import annotations

import threading
from typing import Iterator, Tuple

import pytest
import requests

from sse_gateway.testing import GatewayProcess, WSGIServer, open_stream, serve_wsgi

from app import create_app

SECRET = "callback-s3cret"


@pytest.fixture
def stack(gateway) -> Iterator[Tuple[WSGIServer, GatewayProcess]]:
    """The app on a free port behind a real gateway on free ports; the
    callback is guarded by a secret as in production."""
    with serve_wsgi() as server:
        gw = gateway(
            f"{server.url}/api/sse/callback?secret={SECRET}",
            DISCONNECT_RETRY_SECONDS=0,  # the 404 test makes one disconnect fail on purpose
        )
        server.app = create_app({"SSE_GATEWAY_URL": gw.internal_url, "SSE_CALLBACK_SECRET": SECRET})
        yield server, gw
        gw.stop()


def left_event(server: WSGIServer, request_id: str) -> threading.Event:
    """An event set when the app's disconnect observers ran for ``request_id``."""
    done = threading.Event()
    server.app.extensions["sse_gateway"].on_disconnect(lambda rid: rid == request_id and done.set())
    return done


def test_welcome_is_written_before_ready_and_a_note_reaches_the_stream(stack):
    server, gw = stack
    with open_stream(f"{gw.url}/stream?request_id=alice1") as stream:
        assert stream.status_code == 200
        first, ready = stream.until("ready")
        assert first.json() == {"type": "welcome", "payload": {"request_id": "alice1", "notes": 0}}
        assert ready.event == "ready"

        answer = requests.post(f"{server.url}/api/notes", json={"text": "hello"}, timeout=5)
        assert answer.status_code == 201
        assert answer.json() == {"note": {"id": 1, "text": "hello"}, "delivered": True}
        assert stream.next_event().json() == {"type": "note_added", "payload": {"id": 1, "text": "hello"}}

        assert requests.post(f"{server.url}/api/notify/alice1", json={"text": "psst"}, timeout=5).status_code == 200
        assert stream.next_event().json() == {"type": "notice", "payload": {"text": "psst"}}


def test_a_callback_without_the_secret_is_refused_in_stream(gateway):
    with serve_wsgi() as server:
        gw = gateway(f"{server.url}/api/sse/callback?secret=wrong")
        server.app = create_app({"SSE_GATEWAY_URL": gw.internal_url, "SSE_CALLBACK_SECRET": SECRET})
        with open_stream(f"{gw.url}/stream?request_id=eve1") as stream:
            (rejected,) = stream.until("rejected")
            assert rejected.json()["status"] == 401
        assert server.app.extensions["sse_gateway"].connection_info("eve1") is None
        gw.stop()


def test_closing_the_stream_runs_the_disconnect_observer(stack):
    server, gw = stack
    left = left_event(server, "bob1")
    with open_stream(f"{gw.url}/stream?request_id=bob1") as stream:
        stream.until("ready")
        assert server.app.extensions["sse_gateway"].connection_info("bob1") is not None
    assert left.wait(10), "the disconnect callback reached the app's observers"
    assert server.app.extensions["left"] == ["bob1"]
    assert server.app.extensions["sse_gateway"].connection_info("bob1") is None


def test_a_send_to_a_stream_the_gateway_forgot_ends_the_connection(stack):
    server, gw = stack
    app = server.app
    sse = app.extensions["sse_gateway"]
    # The backend misses the disconnect callback (it answers 503 meanwhile),
    # so it still believes carol1 is connected.
    missed = threading.Event()

    def down(environ, start_response):
        if environ["PATH_INFO"] == "/api/sse/callback":
            missed.set()
        start_response("503 Service Unavailable", [("Content-Type", "application/json")])
        return [b"{}"]

    with open_stream(f"{gw.url}/stream?request_id=carol1") as stream:
        stream.until("ready")
        server.app = down
    assert missed.wait(10), "the gateway tried the disconnect callback"
    server.app = app
    assert sse.connection_info("carol1") is not None, "the app did not hear the disconnect"

    left = left_event(server, "carol1")
    answer = requests.post(f"{server.url}/api/notify/carol1", json={"text": "anyone?"}, timeout=5)
    assert answer.status_code == 404
    assert left.is_set(), "the gateway's 404 ran the disconnect observers before the route answered"
    assert sse.connection_info("carol1") is None
    assert app.extensions["left"] == ["carol1"]
