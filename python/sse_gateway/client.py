"""HTTP client for the gateway's internal API (docs/PROTOCOL.md).

One :class:`Client` per gateway: ``send`` (``/internal/send``), ``publish``
(``/internal/publish``) and the admin calls ``streams``
(``GET /internal/streams``) and ``close`` (``POST /internal/close``). Every
error answer of the gateway (``{"error":{"code":..,"message":..}}``) raises
:class:`GatewayError` carrying its status and code; a gateway that cannot be
reached raises :class:`GatewayUnreachable` (a :class:`GatewayError` too), so
one ``except GatewayError`` covers every failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Literal, Optional

import requests

__all__ = ["Client", "GatewayError", "GatewayUnreachable", "StreamInfo", "SendStatus"]

SendStatus = Literal["ok", "buffered"]

DEFAULT_TIMEOUT_SECONDS = 5.0


class GatewayError(Exception):
    """An error answer of the gateway: HTTP ``status``, the gateway's ``code``
    (e.g. ``TOKEN_NOT_FOUND``, ``INVALID_KEY``, ``UNAUTHORIZED``) and its
    ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class GatewayUnreachable(GatewayError):
    """The gateway did not answer (connection refused, timeout, broken
    connection). ``status`` is 0 and ``code`` is ``GATEWAY_UNREACHABLE``; the
    ``requests`` exception is the ``__cause__``."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "GATEWAY_UNREACHABLE", message)


@dataclass(frozen=True)
class StreamInfo:
    """One open stream, as ``GET /internal/streams`` lists it."""

    token: str
    request_id: Optional[str]
    keys: List[str]
    peer: Optional[str]
    connected_at: str
    queued_bytes: int
    events_sent: int
    instance: str

    @classmethod
    def from_json(cls, item: Dict[str, Any], instance: str) -> "StreamInfo":
        """Builds one from an element of the answer's ``streams``."""
        return cls(
            token=item["token"],
            request_id=item.get("request_id"),
            keys=list(item.get("keys") or []),
            peer=item.get("peer"),
            connected_at=item.get("connected_at", ""),
            queued_bytes=int(item.get("queued_bytes", 0)),
            events_sent=int(item.get("events_sent", 0)),
            instance=instance,
        )


def encode_data(data: Any) -> str:
    """The event's ``data`` as the gateway wants it: JSON text. The browser
    receives it as the ``payload`` of ``{"type":<name>,"payload":<data>}``."""
    return json.dumps(data, separators=(",", ":"))


class Client:
    """The gateway's internal API.

    ``base_url`` is the gateway's internal listener (``INTERNAL_PORT`` /
    ``INTERNAL_LISTEN``), or its public port together with ``secret``
    (``INTERNAL_API_SECRET``, sent as ``Authorization: Bearer``).
    ``/internal/send`` works on both without a secret; ``publish`` and the
    admin calls need the internal listener or the secret.
    """

    def __init__(
        self,
        base_url: str,
        secret: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        session: Optional[requests.Session] = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.timeout = timeout
        self._session = session or requests.Session()
        if secret:
            self._session.headers["Authorization"] = f"Bearer {secret}"

    def close_session(self) -> None:
        """Closes the pooled HTTP connections."""
        self._session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_session()

    def __repr__(self) -> str:  # never shows the secret
        return f"Client({self.base_url!r}, secret={'***' if self.secret else None})"

    # -- transport -----------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            resp = self._session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            raise GatewayUnreachable(f"{method} {url}: {e}") from e
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400 or not isinstance(body, dict):
            raise _error_of(resp.status_code, body, resp.text)
        return body

    # -- compatible API ------------------------------------------------

    def send(self, token: str, name: Optional[str], data: Any, close: bool = False) -> SendStatus:
        """Sends one event to the stream ``token`` (``POST /internal/send``).

        ``data`` is encoded with ``json.dumps``; ``name`` ``None`` or ``""``
        sends an unnamed event. ``close=True`` ends the stream after it.
        Returns ``"ok"`` (written) or ``"buffered"`` (the stream's connect
        callback is still running; written before ``ready``). An unknown
        token raises :class:`GatewayError` 404 ``TOKEN_NOT_FOUND``.
        """
        event: Dict[str, Any] = {"data": encode_data(data)}
        if name:
            event["name"] = name
        body: Dict[str, Any] = {"token": token, "event": event}
        if close:
            body["close"] = True
        return self._send_status(body)

    def end(self, token: str) -> SendStatus:
        """Ends the stream ``token`` without an event (a close-only send)."""
        return self._send_status({"token": token, "close": True})

    def _send_status(self, body: Dict[str, Any]) -> SendStatus:
        answer = self._request("POST", "/internal/send", json=body)
        status = answer.get("status")
        if status == "ok":
            return "ok"
        if status == "buffered":
            return "buffered"
        raise GatewayError(200, "UNEXPECTED_ANSWER", f"/internal/send answered {answer!r}")

    # -- extensions ----------------------------------------------------

    def publish(self, key: str, name: Optional[str], data: Any, close: bool = False) -> int:
        """Publishes one event to every stream bound to routing ``key``
        (``POST /internal/publish``); returns how many streams matched."""
        event: Dict[str, Any] = {"data": encode_data(data)}
        if name:
            event["name"] = name
        body: Dict[str, Any] = {"key": key, "event": event}
        if close:
            body["close"] = True
        return _int_field(self._request("POST", "/internal/publish", json=body), "matched")

    def streams(self, key: Optional[str] = None, limit: int = 1000) -> Iterator[StreamInfo]:
        """Every open stream of the gateway (or those bound to ``key``),
        ordered by token, fetched ``limit`` at a time (``GET
        /internal/streams``, following ``next_after`` until it is null)."""
        after: Optional[str] = None
        while True:
            params: Dict[str, Any] = {"limit": limit}
            if key is not None:
                params["key"] = key
            if after is not None:
                params["after"] = after
            page = self._request("GET", "/internal/streams", params=params)
            instance = str(page.get("instance", ""))
            for item in page.get("streams") or []:
                yield StreamInfo.from_json(item, instance)
            after = page.get("next_after")
            if after is None:
                return

    def close(self, *, key: Optional[str] = None, token: Optional[str] = None, retry_ms: Optional[int] = None) -> int:
        """Ends the streams bound to ``key``, or the stream ``token`` (exactly
        one of them), each with a ``retry:`` hint (``retry_ms``, else the
        gateway's random 1-5 s) (``POST /internal/close``). Returns how many
        streams matched (with RabbitMQ, the total over every instance)."""
        if (key is None) == (token is None):
            raise ValueError("close() takes exactly one of key= or token=")
        body: Dict[str, Any] = {"key": key} if key is not None else {"token": token}
        if retry_ms is not None:
            body["retry_ms"] = retry_ms
        return _int_field(self._request("POST", "/internal/close", json=body), "matched")

    def history_position(self) -> Optional[str]:
        """The gateway history's current cursor (``GET /internal/history``),
        or ``None`` when ``HISTORY_SECONDS`` is off. Read it *before* taking a
        snapshot and give it to the page with the snapshot; the page opens
        its stream with ``?lastEventId=<cursor>`` and receives every event
        after it (snapshot, then live, without a gap)."""
        answer = self._request("GET", "/internal/history")
        cursor = answer.get("id")
        if cursor is not None and not isinstance(cursor, str):
            raise GatewayError(200, "UNEXPECTED_ANSWER", f"/internal/history answered {answer!r}")
        return cursor

    def healthz(self) -> Dict[str, Any]:
        """``GET /healthz``."""
        return self._request("GET", "/healthz")


def _error_of(status: int, body: Any, text: str) -> GatewayError:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return GatewayError(status, str(err.get("code", "UNKNOWN")), str(err.get("message", "")))
    if status < 400:
        return GatewayError(status, "UNEXPECTED_ANSWER", f"not a JSON object: {text[:200]!r}")
    return GatewayError(status, "HTTP_ERROR", text[:200] or f"HTTP {status}")


def _int_field(answer: Dict[str, Any], name: str) -> int:
    value = answer.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise GatewayError(200, "UNEXPECTED_ANSWER", f"no integer {name!r} in {answer!r}")
    return value
