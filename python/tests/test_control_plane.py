"""The control-plane contract end to end, real gateway binary against the
Flask integration: instance in callbacks, rosters, a silent instance,
credential expiry, disconnect retries."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Iterator, Tuple

import pytest
from flask import Flask

from sse_gateway import Identity
from sse_gateway.flask import SSEGateway
from sse_gateway.testing import GatewayProcess, WSGIServer, open_stream, serve_wsgi


def instance_id() -> str:
    return f"gw-py-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def roster_stack(gateway) -> Iterator[Tuple[WSGIServer, GatewayProcess, SSEGateway, str]]:
    name = instance_id()
    with serve_wsgi() as server:
        gw = gateway(f"{server.url}/api/sse/callback", INSTANCE_ID=name, ROSTER_INTERVAL_SECONDS=1)
        app = Flask("roster-test")
        sse = SSEGateway(app, gateway_url=gw.internal_url)
        server.app = app
        yield server, gw, sse, name
        if gw.running():  # one test kills it
            gw.stop()  # before the app goes: the drain's disconnect callbacks still reach it
        sse.manager.shutdown()


def left(sse: SSEGateway, request_id: str) -> threading.Event:
    done = threading.Event()
    sse.on_disconnect(lambda rid: rid == request_id and done.set())
    return done


def test_connect_callbacks_name_the_instance_and_a_roster_removes_a_token_it_does_not_hold(roster_stack):
    _server, gw, sse, name = roster_stack
    with open_stream(f"{gw.url}/stream?request_id=live1") as stream:
        stream.until("ready")
        assert sse.connection_info("live1").instance == name
        # A connection the backend believes in but the gateway never had
        # (e.g. its disconnect callback was lost for good).
        sse.manager.on_connect("ghost1", str(uuid.uuid4()), "/stream?request_id=ghost1", instance=name)
        ghost_gone = left(sse, "ghost1")
        assert ghost_gone.wait(10), "the second roster after it (2 s) removes the ghost with instance_lost"
        assert sse.connection_info("live1") is not None, "a listed token stays"


def test_a_gateway_that_dies_loses_its_connections_after_three_intervals(roster_stack):
    _server, gw, sse, name = roster_stack
    stream = open_stream(f"{gw.url}/stream?request_id=doomed1")
    stream.until("ready")
    gone = left(sse, "doomed1")
    # Wait for one roster so the instance is watched, then kill it: no
    # disconnect callback, no further roster.
    rostered = threading.Event()
    original = sse.manager.on_roster

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        rostered.set()
        return result

    sse.manager.on_roster = spy  # type: ignore[method-assign]
    assert rostered.wait(10)
    gw.process.kill()
    gw.process.wait()
    stream.close()
    killed_at = time.monotonic()
    assert gone.wait(15), "3 x 1 s of silence removes every token of the instance"
    assert time.monotonic() - killed_at >= 1.0, "not removed before the instance fell silent"
    assert sse.connection_info("doomed1") is None


def test_expires_at_from_the_identity_ends_the_stream_with_auth_expired(gateway):
    with serve_wsgi() as server:
        gw = gateway(f"{server.url}/api/sse/callback")
        app = Flask("expiry-test")
        sse = SSEGateway(app, gateway_url=gw.internal_url, identify=lambda h: Identity("alice", expires_at=time.time() - 1))
        server.app = app
        gone = left(sse, "exp1")
        with open_stream(f"{gw.url}/stream?request_id=exp1") as stream:
            names = [ev.event for ev in stream.events()]
        assert names[:1] == ["ready"] and "auth_expired" in names, names
        assert stream.ended
        assert gone.wait(10), "server_closed disconnect reached the app"
        gw.stop()


def test_a_failed_disconnect_callback_is_retried(gateway):
    with serve_wsgi() as server:
        gw = gateway(f"{server.url}/api/sse/callback", DISCONNECT_RETRY_SECONDS=30)
        app = Flask("retry-test")
        sse = SSEGateway(app, gateway_url=gw.internal_url)
        server.app = app
        gone = left(sse, "retry1")
        refused = threading.Event()

        def down(environ, start_response):
            refused.set()
            server.app = app  # back up for the retry
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b"{}"]

        with open_stream(f"{gw.url}/stream?request_id=retry1") as stream:
            stream.until("ready")
            server.app = down
        assert refused.wait(10), "the first disconnect callback was refused"
        assert gone.wait(30), "the retried disconnect reached the app"
        gw.stop()
