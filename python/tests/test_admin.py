"""Admin calls (GET /internal/streams, POST /internal/close) against the real
gateway binary."""

from __future__ import annotations

import threading
from typing import Iterator, Tuple

import pytest
from flask import Flask

from sse_gateway import GatewayError
from sse_gateway.flask import SSEGateway
from sse_gateway.testing import GatewayProcess, open_stream, serve_wsgi


@pytest.fixture
def admin_stack(gateway) -> Iterator[Tuple[GatewayProcess, SSEGateway]]:
    with serve_wsgi() as server:
        gw = gateway(
            f"{server.url}/api/sse/callback",
            DEFAULT_BINDINGS="broadcast,connection.{request_id}",
            INSTANCE_ID="gw-admin-test",
        )
        app = Flask("admin-test")
        sse = SSEGateway(app, gateway_url=gw.internal_url)
        server.app = app
        yield gw, sse
        gw.stop()  # before the app goes: the drain's disconnect callbacks still reach it


def test_streams_lists_every_open_stream_across_pages_and_by_key(admin_stack):
    gw, sse = admin_stack
    streams = [open_stream(f"{gw.url}/stream?request_id=adm{n}") for n in range(3)]
    try:
        for s in streams:
            s.until("ready")
        listed = list(gw.client.streams(limit=1))
        assert sorted(i.request_id for i in listed) == ["adm0", "adm1", "adm2"], "three pages of one"
        assert [i.token for i in listed] == sorted(i.token for i in listed), "ordered by token"
        tokens = {sse.connection_info(f"adm{n}").token for n in range(3)}
        assert {i.token for i in listed} == tokens
        first = next(i for i in listed if i.request_id == "adm0")
        assert sorted(first.keys) == ["broadcast", "connection.adm0"]
        assert first.instance == "gw-admin-test"
        assert first.peer and first.peer.startswith("127.0.0.1:")
        assert first.connected_at.endswith("Z") or "+" in first.connected_at
        assert [i.request_id for i in gw.client.streams(key="connection.adm1")] == ["adm1"]
        assert list(gw.client.streams(key="nobody.here")) == []
    finally:
        for s in streams:
            s.close()


def test_streams_errors_carry_the_gateways_code(admin_stack):
    gw, _sse = admin_stack
    for kwargs, code in [({"limit": 0}, "INVALID_LIMIT"), ({"limit": 10001}, "INVALID_LIMIT"), ({"key": "a b"}, "INVALID_KEY")]:
        with pytest.raises(GatewayError) as e:
            list(gw.client.streams(**kwargs))
        assert (e.value.status, e.value.code) == (400, code), kwargs


def test_close_by_token_ends_that_stream_with_the_retry_hint(admin_stack):
    gw, sse = admin_stack
    gone = threading.Event()
    sse.on_disconnect(lambda rid: rid == "cls1" and gone.set())
    with open_stream(f"{gw.url}/stream?request_id=cls1") as stream, open_stream(
        f"{gw.url}/stream?request_id=cls2"
    ) as other:
        stream.until("ready")
        other.until("ready")
        token = sse.connection_info("cls1").token
        assert gw.client.close(token=token, retry_ms=1234) == 1
        rest = list(stream.events())
        assert [ev.retry for ev in rest] == [1234]
        assert stream.ended
        assert gone.wait(10), "server_closed disconnect reached the app"
        assert sse.connection_info("cls2") is not None
        assert gw.client.close(token=token) == 0, "a token that is gone matches nothing"


def test_close_by_key_ends_every_bound_stream(admin_stack):
    gw, _sse = admin_stack
    with open_stream(f"{gw.url}/stream?request_id=k1") as a, open_stream(f"{gw.url}/stream?request_id=k2") as b:
        a.until("ready")
        b.until("ready")
        assert gw.client.close(key="broadcast") == 2
        for s in (a, b):
            list(s.events())
            assert s.ended
        assert gw.client.close(key="broadcast") == 0


def test_close_needs_exactly_one_target_and_a_valid_key(admin_stack):
    gw, _sse = admin_stack
    with pytest.raises(ValueError):
        gw.client.close()
    with pytest.raises(ValueError):
        gw.client.close(key="broadcast", token="t")
    with pytest.raises(GatewayError) as e:
        gw.client.close(key="bad key")
    assert (e.value.status, e.value.code) == (400, "INVALID_KEY")
    with pytest.raises(GatewayError) as e:
        gw.client.close(key="broadcast", retry_ms=-5)
    assert e.value.code == "INVALID_RETRY_MS"


def test_admin_on_the_public_port_needs_the_secret(gateway):
    from sse_gateway import Client

    gw = gateway(INTERNAL_API_SECRET="adm1n")
    with pytest.raises(GatewayError) as e:
        list(Client(gw.url).streams())
    assert (e.value.status, e.value.code) == (401, "UNAUTHORIZED")
    assert list(Client(gw.url, secret="adm1n").streams()) == []
    assert Client(gw.url, secret="adm1n").close(key="broadcast") == 0
