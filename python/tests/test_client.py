"""Client against the real gateway binary (started by the `gateway` fixture)."""

from __future__ import annotations

import socket
import threading

import pytest
from flask import Flask

from sse_gateway import Client, GatewayError, GatewayUnreachable
from sse_gateway.flask import SSEGateway
from sse_gateway.testing import open_stream, serve_wsgi

UNKNOWN_TOKEN = "00000000-0000-4000-8000-000000000000"


def test_send_to_an_unknown_token_raises_404_token_not_found(gateway):
    gw = gateway()
    with pytest.raises(GatewayError) as e:
        gw.client.send(UNKNOWN_TOKEN, "x", {})
    assert (e.value.status, e.value.code) == (404, "TOKEN_NOT_FOUND")
    assert e.value.message


def test_publish_returns_matched_and_bad_keys_raise_their_code(gateway):
    gw = gateway()
    assert gw.client.publish("broadcast", "x", {"a": 1}) == 0
    with pytest.raises(GatewayError) as e:
        gw.client.publish("has space", "x", {})
    assert (e.value.status, e.value.code) == (400, "INVALID_KEY")


def test_publish_on_the_public_port_needs_the_secret(gateway):
    gw = gateway(INTERNAL_API_SECRET="topsecret")
    with pytest.raises(GatewayError) as e:
        Client(gw.url).publish("broadcast", "x", {})
    assert (e.value.status, e.value.code) == (401, "UNAUTHORIZED")
    with pytest.raises(GatewayError) as e:
        Client(gw.url, secret="wrong").publish("broadcast", "x", {})
    assert e.value.code == "UNAUTHORIZED"
    assert Client(gw.url, secret="topsecret").publish("broadcast", "x", {}) == 0
    assert "topsecret" not in repr(Client(gw.url, secret="topsecret"))


def test_publish_on_the_public_port_without_a_configured_secret_is_403(gateway):
    gw = gateway()
    with pytest.raises(GatewayError) as e:
        Client(gw.url).publish("broadcast", "x", {})
    assert (e.value.status, e.value.code) == (403, "INTERNAL_LISTENER_ONLY")


def test_an_unreachable_gateway_raises_gateway_unreachable():
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(GatewayUnreachable) as e:
            Client(url, timeout=2).send(UNKNOWN_TOKEN, "x", {})
    assert isinstance(e.value, GatewayError)
    assert (e.value.status, e.value.code) == (0, "GATEWAY_UNREACHABLE")


def test_send_during_the_connect_callback_is_buffered_then_ok_and_close_ends_the_stream(gateway):
    answers = []
    with serve_wsgi() as server:
        gw = gateway(f"{server.url}/api/sse/callback", DEFAULT_BINDINGS="broadcast,connection.{request_id}")
        app = Flask("client-test")
        sse = SSEGateway(app, gateway_url=gw.internal_url)

        @sse.on_connect
        def during_callback(request_id: str) -> None:
            token = sse.connection_info(request_id).token
            answers.append(sse.client.send(token, "early", {"n": 1}))

        server.app = app
        with open_stream(f"{gw.url}/stream?request_id=r1") as stream:
            early, ready = stream.until("ready")
            assert answers == ["buffered"]
            assert early.json() == {"type": "early", "payload": {"n": 1}}
            token = sse.connection_info("r1").token
            assert gw.client.send(token, "later", [1, "two"]) == "ok"
            assert stream.next_event().json() == {"type": "later", "payload": [1, "two"]}
            assert gw.client.send(token, None, "plain") == "ok"
            unnamed = stream.next_event()
            assert (unnamed.event, unnamed.data) == ("message", '"plain"')
            assert gw.client.publish("connection.r1", "pub", {"k": True}) == 1
            assert stream.next_event().json() == {"type": "pub", "payload": {"k": True}}
            left = threading.Event()
            sse.on_disconnect(lambda rid: left.set())
            assert gw.client.send(token, "bye", {}, close=True) == "ok"
            assert stream.next_event().json() == {"type": "bye", "payload": {}}
            rest = list(stream.events())
            assert all(ev.event == "retry" for ev in rest) and stream.ended
            assert left.wait(10), "server_closed disconnect reached the app"
        with pytest.raises(GatewayError) as e:
            gw.client.send(token, "after", {})
        assert e.value.code == "TOKEN_NOT_FOUND"
        gw.stop()


def test_history_position_is_none_when_off_and_a_cursor_when_on(gateway):
    assert gateway().client.history_position() is None
    gw = gateway(HISTORY_SECONDS="60")
    first = gw.client.history_position()
    assert isinstance(first, str) and first
    gw.client.publish("broadcast", "x", {})
    assert gw.client.history_position() != first, "a publish moves the position"
