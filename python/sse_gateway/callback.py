"""The gateway's callback (connect, disconnect, roster), framework-free.

The Python counterpart of the Rust toolkit's ``callback::CallbackHandler``
(docs/BACKEND.md, Callback handler). Checks, in this order, every answer
JSON:

1. secret (when configured): the ``secret`` query parameter must equal it; an
   empty configured secret refuses everything → 401 ``{"error":"Unauthorized"}``;
2. body: empty or not ``application/json`` → 400 ``Missing JSON body``;
   unparsable → 400 ``Invalid JSON``; not an object → 400 ``Invalid payload``;
3. ``action``: ``connect``, ``disconnect`` or ``roster``, else 400
   ``Unknown action: <action>``;
4. shape → 400 ``{"error":"Invalid payload","details":[...]}``;
5. connect: the first ``request_id`` query parameter of ``request.url``;
   missing/empty → 400 ``Missing request_id in URL``; containing ``:`` → 400
   ``Invalid request_id format``;
6. connect: identity, registration (replacement, observers), 200 ``{}`` or the
   routing answer; disconnect: 200 ``{}``; roster: 200 ``{}``;
7. an exception in the handler → 500 ``{"error":"Internal server error"}``.

:func:`CallbackHandler.handle` takes the raw query string, content type and
body and gives ``(status, json)``, so any web framework can serve it
(:mod:`sse_gateway.flask` does for Flask).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple
from urllib.parse import parse_qsl

from .connections import ConnectionManager, Identity

__all__ = ["CallbackError", "CallbackHandler", "AnswerMode", "Identify", "request_id_of"]

log = logging.getLogger("sse_gateway.callback")

#: ``"empty"``: the connect answer is ``{}`` (as the original backends answer).
#: ``"routing"``: ``{"request_id","subject","role","bindings"}``, so a gateway
#: that publishes by key reaches the stream (needed with publish).
AnswerMode = Literal["empty", "routing"]

#: Resolves the identity of a connecting stream from its forwarded headers
#: (lower-case names). None → no identity bound; an exception is logged and
#: counts as None. The connection is never refused for it.
Identify = Callable[[Mapping[str, str]], Optional[Identity]]


class CallbackError(Exception):
    """A refused callback: ``status`` and JSON ``body`` exactly as the
    original backends answer."""

    def __init__(self, status: int, error: str, details: Optional[List[str]] = None) -> None:
        super().__init__(error)
        self.status = status
        self.body: Dict[str, Any] = {"error": error}
        if details is not None:
            self.body["details"] = details


def _first_param(query: str, name: str) -> Optional[str]:
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k == name:
            return v
    return None


def request_id_of(url: str) -> str:
    """The ``request_id`` of a forwarded URL: the first ``request_id`` query
    parameter, percent-decoded. Raises :class:`CallbackError` (400) when it
    is missing, empty or contains ``:``."""
    query = url.split("?", 1)[1] if "?" in url else ""
    query = query.split("#", 1)[0]
    value = _first_param(query, "request_id")
    if not value:
        raise CallbackError(400, "Missing request_id in URL")
    if ":" in value:
        raise CallbackError(400, "Invalid request_id format")
    return value


def _validate(body: Dict[str, Any], action: str) -> Tuple[str, str, Dict[str, str], Optional[str]]:
    details: List[str] = []
    token = body.get("token")
    if not isinstance(token, str):
        details.append("token: a string is required")
    if action == "disconnect" and not isinstance(body.get("reason"), str):
        details.append("reason: a string is required")
    request = body.get("request")
    url: Any = None
    headers: Dict[str, str] = {}
    if isinstance(request, dict):
        url = request.get("url")
        if not isinstance(url, str):
            details.append("request.url: a string is required")
        raw_headers = request.get("headers")
        if isinstance(raw_headers, dict):
            for k, v in raw_headers.items():
                if isinstance(v, str):
                    headers[k] = v
                else:
                    details.append(f"request.headers.{k}: a string is required")
        else:
            details.append("request.headers: an object of strings is required")
    else:
        details.append("request: an object is required")
    instance = body.get("instance")
    if instance is not None and not isinstance(instance, str):
        details.append("instance: a string is required")
    if details:
        raise CallbackError(400, "Invalid payload", details)
    return token, url, headers, instance  # type: ignore[return-value]


def _validate_roster(body: Dict[str, Any]) -> Tuple[str, List[str], float]:
    details: List[str] = []
    instance = body.get("instance")
    if not isinstance(instance, str) or not instance:
        details.append("instance: a non-empty string is required")
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        details.append("tokens: an array of strings is required")
    raw = body.get("interval_seconds")
    interval = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else 0.0
    if not (0 < interval < 1e9):  # also refuses NaN and infinity
        details.append("interval_seconds: a positive number is required")
    if details or not isinstance(instance, str) or not isinstance(tokens, list):
        raise CallbackError(400, "Invalid payload", details)
    return instance, tokens, interval


def local_user(_headers: Mapping[str, str]) -> Identity:
    """The default :data:`Identify`: every stream is :data:`LOCAL_USER`
    (OIDC off)."""
    return Identity.local_user()


class CallbackHandler:
    """The callback logic. ``secret``: required value of the ``secret`` query
    parameter (``""`` refuses every callback, so a production deployment
    that forgot it fails closed; None: no check). ``roster``: accept roster
    callbacks (else they are ``Unknown action: roster``, which the gateway
    reads as "not supported")."""

    def __init__(
        self,
        manager: ConnectionManager,
        *,
        secret: Optional[str] = None,
        answer: AnswerMode = "empty",
        identify: Identify = local_user,
        roster: bool = True,
    ) -> None:
        self.manager = manager
        self.secret = secret
        self.answer = answer
        self.identify = identify
        self.roster = roster

    def handle(self, query: str, content_type: Optional[str], body: bytes) -> Tuple[int, Dict[str, Any]]:
        """The whole exchange, from raw parts (query string without ``?``,
        ``Content-Type`` header, body bytes) to status and JSON answer."""
        try:
            return 200, self._handle(query, content_type, body)
        except CallbackError as e:
            return e.status, e.body
        except Exception:
            log.exception("callback handler failed")
            return 500, {"error": "Internal server error"}

    def _handle(self, query: str, content_type: Optional[str], body: bytes) -> Dict[str, Any]:
        if self.secret is not None:
            given = _first_param(query or "", "secret")
            if self.secret == "" or given != self.secret:
                raise CallbackError(401, "Unauthorized")
        mime = (content_type or "").split(";", 1)[0].strip().lower()
        if not body or mime != "application/json":
            raise CallbackError(400, "Missing JSON body")
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise CallbackError(400, "Invalid JSON") from None
        if not isinstance(value, dict):
            raise CallbackError(400, "Invalid payload", ["body: a JSON object is required"])
        action = value.get("action")
        if action == "connect":
            token, url, headers, instance = _validate(value, "connect")
            return self.connect(token, url, headers, instance)
        if action == "disconnect":
            token, _url, _headers, _instance = _validate(value, "disconnect")
            self.manager.on_disconnect(token, value["reason"])
            return {}
        if action == "roster" and self.roster:
            instance, tokens, interval = _validate_roster(value)
            self.manager.on_roster(instance, tokens, interval)
            return {}
        shown = action if isinstance(action, str) else json.dumps(action, separators=(",", ":"))
        raise CallbackError(400, f"Unknown action: {shown}")

    def connect(
        self, token: str, url: str, headers: Mapping[str, str], instance: Optional[str] = None
    ) -> Dict[str, Any]:
        """Handles a connect: ``request_id`` from ``url``, identity from
        ``headers``, registration; returns the connect answer."""
        request_id = request_id_of(url)
        try:
            identity = self.identify(headers)
        except Exception as e:  # never refuse a stream for its identity
            log.warning("no identity bound to stream %s: %s", request_id, e)
            identity = None
        # EventSource sends Last-Event-ID when it reconnects (or the page passes lastEventId).
        query = url.split("?", 1)[1] if "?" in url else ""
        resumed = bool(
            next((v for k, v in headers.items() if k.lower() == "last-event-id"), "")
            or _first_param(query, "lastEventId")
        )
        info = self.manager.on_connect(request_id, token, url, identity, instance, resumed=resumed)
        answer: Dict[str, Any] = {}
        if self.answer == "routing":
            answer = {
                "request_id": info.request_id,
                "subject": info.subject,
                "role": info.role,
                "bindings": ConnectionManager.bindings(info),
            }
        if identity is not None and identity.expires_at is not None:
            answer["expires_at"] = identity.expires_at
        return answer
