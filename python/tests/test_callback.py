"""CallbackHandler and the Flask route: order of checks, answers and
request_id rules as in docs/BACKEND.md (Callback handler)."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from sse_gateway import CallbackHandler, ConnectionManager, Identity, request_id_of
from sse_gateway.flask import SSEGateway

JSON = "application/json"


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def connect(url: str = "/s?request_id=abc", token: str = "tok-1", **extra) -> bytes:
    return body(action="connect", token=token, request={"url": url, "headers": {"cookie": "a=1"}}, **extra)


def handler(rec, **kw) -> CallbackHandler:
    return CallbackHandler(ConnectionManager(rec), **kw)


def test_connect_registers_the_first_request_id_and_answers_empty_object(rec):
    h = handler(rec)
    seen = []
    h.manager.register_on_connect(seen.append)
    assert h.handle("", JSON, connect("/s?x=1&request_id=abc&request_id=zzz")) == (200, {})
    assert seen == ["abc"]
    info = h.manager.connection_info("abc")
    assert (info.token, info.url, info.subject) == ("tok-1", "/s?x=1&request_id=abc&request_id=zzz", "local-user")


def test_disconnect_removes_the_connection(rec):
    h = handler(rec)
    h.handle("", JSON, connect())
    disc = body(action="disconnect", reason="client_closed", token="tok-1", request={"url": "/s", "headers": {}})
    assert h.handle("", JSON, disc) == (200, {})
    assert not h.manager.has_connection("abc")


@pytest.mark.parametrize("query", ["", "secret=wrong", "other=1"])
def test_the_secret_is_checked_first(rec, query):
    h = handler(rec, secret="s3cret")
    assert h.handle(query, None, b"") == (401, {"error": "Unauthorized"}), "before the body check"
    assert h.handle("secret=s3cret", JSON, connect())[0] == 200


def test_an_empty_configured_secret_refuses_everything(rec):
    h = handler(rec, secret="")
    assert h.handle("secret=", JSON, connect()) == (401, {"error": "Unauthorized"})


@pytest.mark.parametrize(
    "content_type, raw, expected",
    [
        (JSON, b"", (400, {"error": "Missing JSON body"})),
        ("text/plain", connect(), (400, {"error": "Missing JSON body"})),
        (None, connect(), (400, {"error": "Missing JSON body"})),
        (JSON, b"{not json", (400, {"error": "Invalid JSON"})),
        (JSON, b"[1]", (400, {"error": "Invalid payload", "details": ["body: a JSON object is required"]})),
        (JSON, body(action="dance"), (400, {"error": "Unknown action: dance"})),
        (JSON, body(action=7), (400, {"error": "Unknown action: 7"})),
        (JSON, body(token="t"), (400, {"error": "Unknown action: null"})),
    ],
)
def test_body_and_action_checks_in_order(rec, content_type, raw, expected):
    assert handler(rec).handle("", content_type, raw) == expected


def test_content_type_parameters_and_case_are_accepted(rec):
    assert handler(rec).handle("", "Application/JSON; charset=utf-8", connect())[0] == 200


def test_shape_errors_list_every_detail(rec):
    status, answer = handler(rec).handle("", JSON, body(action="disconnect", request={"headers": {"a": 1}}))
    assert status == 400
    assert answer == {
        "error": "Invalid payload",
        "details": [
            "token: a string is required",
            "reason: a string is required",
            "request.url: a string is required",
            "request.headers.a: a string is required",
        ],
    }


@pytest.mark.parametrize(
    "url, error",
    [
        ("/s", "Missing request_id in URL"),
        ("/s?request_id=", "Missing request_id in URL"),
        ("/s?request_id", "Missing request_id in URL"),
        ("/s#request_id=abc", "Missing request_id in URL"),
        ("/s?request_id=a%3Ab", "Invalid request_id format"),
    ],
)
def test_request_id_rules(rec, url, error):
    h = handler(rec)
    assert h.handle("", JSON, connect(url)) == (400, {"error": error})
    assert len(h.manager) == 0


def test_request_id_is_percent_decoded():
    assert request_id_of("/s?request_id=a%20b+c") == "a b c"


def test_routing_answer_carries_bindings_and_expiry(rec):
    h = handler(rec, answer="routing", identify=lambda headers: Identity("alice", "admin", expires_at=1900000000))
    status, answer = h.handle("", JSON, connect())
    assert status == 200
    assert answer == {
        "request_id": "abc",
        "subject": "alice",
        "role": "admin",
        "bindings": ["broadcast", "connection.abc", "subject.alice", "role.admin"],
        "expires_at": 1900000000,
    }


def test_identity_failure_never_refuses_the_stream(rec):
    def broken(headers):
        raise ValueError("bad token")

    h = handler(rec, identify=broken)
    assert h.handle("", JSON, connect()) == (200, {})
    assert h.manager.connection_info("abc").subject is None


def test_identify_sees_the_forwarded_headers(rec):
    seen = []
    h = handler(rec, identify=lambda headers: seen.append(dict(headers)))
    h.handle("", JSON, connect())
    assert seen == [{"cookie": "a=1"}]


def test_an_exception_in_the_handler_is_500(rec):
    h = handler(rec)
    h.manager.on_connect = None  # type: ignore[assignment]
    assert h.handle("", JSON, connect()) == (500, {"error": "Internal server error"})


def test_the_connect_instance_is_remembered_for_rosters(rec):
    h = handler(rec)
    assert h.handle("", JSON, connect(instance="gw-1"))[0] == 200
    assert h.manager.connection_info("abc").instance == "gw-1"


def test_roster_callback_removes_unlisted_tokens(rec):
    h = CallbackHandler(ConnectionManager(rec))
    first = body(action="roster", instance="gw-1", tokens=[], interval_seconds=30)
    assert h.handle("", JSON, first) == (200, {})
    h.handle("", JSON, connect(instance="gw-1"))
    h.handle("", JSON, connect("/s?request_id=def", token="tok-2", instance="gw-1"))
    gone = []
    h.manager.register_on_disconnect(gone.append)
    roster = body(action="roster", instance="gw-1", tokens=["tok-2"], interval_seconds=30)
    assert h.handle("", JSON, roster) == (200, {})
    assert gone == [], "registered after the previous roster: spared once"
    assert h.handle("", JSON, roster) == (200, {})
    assert gone == ["abc"]
    h.manager.shutdown()


def test_roster_shape_errors_and_roster_off(rec):
    bad = body(action="roster", instance="", tokens=[1], interval_seconds=0)
    assert handler(rec).handle("", JSON, bad) == (
        400,
        {
            "error": "Invalid payload",
            "details": [
                "instance: a non-empty string is required",
                "tokens: an array of strings is required",
                "interval_seconds: a positive number is required",
            ],
        },
    )
    for interval in (True, "5", float("nan"), float("inf"), -1):
        status, answer = handler(rec).handle("", JSON, body(action="roster", instance="i", tokens=[], interval_seconds=interval))
        assert (status, answer["details"]) == (400, ["interval_seconds: a positive number is required"]), interval
    off = handler(rec, roster=False)
    good = body(action="roster", instance="gw-1", tokens=[], interval_seconds=5)
    assert off.handle("", JSON, good) == (400, {"error": "Unknown action: roster"})


# -- the Flask route ---------------------------------------------------


def flask_app(**config) -> Flask:
    app = Flask("t")
    app.config.update(config)
    SSEGateway(app, gateway_url="http://127.0.0.1:9")
    return app


def test_flask_route_serves_the_handler_with_status_and_json():
    client = flask_app().test_client()
    r = client.post("/api/sse/callback", data=connect(), content_type=JSON)
    assert (r.status_code, r.get_json()) == (200, {})
    r = client.post("/api/sse/callback", data=b"x", content_type="text/plain")
    assert (r.status_code, r.get_json()) == (400, {"error": "Missing JSON body"})
    assert client.get("/api/sse/callback").status_code == 405


def test_flask_secret_from_config_and_production_without_secret_fails_closed():
    guarded = flask_app(SSE_CALLBACK_SECRET="s").test_client()
    assert guarded.post("/api/sse/callback?secret=s", data=connect(), content_type=JSON).status_code == 200
    assert guarded.post("/api/sse/callback?secret=x", data=connect(), content_type=JSON).status_code == 401
    prod = flask_app(FLASK_ENV="production").test_client()
    assert prod.post("/api/sse/callback?secret=", data=connect(), content_type=JSON).status_code == 401


def test_flask_publish_setting_turns_on_routing_answers():
    client = flask_app(SSE_GATEWAY_PUBLISH="true").test_client()
    r = client.post("/api/sse/callback", data=connect(), content_type=JSON)
    assert r.get_json()["bindings"] == ["broadcast", "connection.abc", "subject.local-user"]


def test_flask_observers_registered_before_init_app_are_kept():
    sse = SSEGateway(gateway_url="http://127.0.0.1:9")
    seen = []
    sse.on_connect(seen.append)
    app = Flask("t")
    sse.init_app(app)
    app.test_client().post("/api/sse/callback", data=connect(), content_type=JSON)
    assert seen == ["abc"]
    assert app.extensions["sse_gateway"] is sse


def test_a_connect_with_last_event_id_or_last_event_id_param_is_a_resumed_stream(rec):
    h = handler(rec)
    assert h.handle("", JSON, connect("/s?request_id=a", token="t1"))[0] == 200
    assert h.manager.connection_info("a").resumed is False
    resumed = body(
        action="connect", token="t2", request={"url": "/s?request_id=b", "headers": {"last-event-id": "1-5"}}
    )
    assert h.handle("", JSON, resumed)[0] == 200
    assert h.manager.connection_info("b").resumed is True
    assert h.handle("", JSON, connect("/s?request_id=c&lastEventId=1-5", token="t3"))[0] == 200
    assert h.manager.connection_info("c").resumed is True
