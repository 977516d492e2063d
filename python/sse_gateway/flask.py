"""Flask integration: the callback endpoint and a connection manager.

::

    from flask import Flask
    from sse_gateway.flask import SSEGateway

    app = Flask(__name__)
    sse = SSEGateway(app)            # POST /api/sse/callback

    @sse.on_connect
    def greet(request_id):
        sse.send_to(request_id, "hello", {"msg": "hi"})

    sse.broadcast("data_changed", {"table": "leases"})

Settings come from ``app.config``, else the environment, with the names of the
Rust toolkit (docs/BACKEND.md, Configuration):

========================  ===========================  ==========================================
name                      default                      meaning
========================  ===========================  ==========================================
``SSE_GATEWAY_URL``       ``http://localhost:3002``    gateway base URL for sends (and publish)
``SSE_GATEWAY_SECRET``    unset                        bearer for the gateway's internal API
``SSE_GATEWAY_PUBLISH``   false                        broadcasts by ``/internal/publish``;
                                                       connect answers then carry bindings
``SSE_CALLBACK_SECRET``   unset                        required ``secret`` query parameter of the
                                                       callback (always required with
                                                       ``FLASK_ENV=production``)
========================  ===========================  ==========================================

Keyword arguments of :class:`SSEGateway` win over both.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import flask

from .callback import AnswerMode, CallbackHandler, Identify, local_user
from .client import Client
from .connections import ConnectionInfo, ConnectionManager, Identity, Observer

__all__ = ["SSEGateway", "DEFAULT_CALLBACK_PATH", "DEFAULT_GATEWAY_URL"]

DEFAULT_CALLBACK_PATH = "/api/sse/callback"
DEFAULT_GATEWAY_URL = "http://localhost:3002"

_TRUE = {"1", "true", "yes", "on"}


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in _TRUE


class SSEGateway:
    """A Flask extension: registers ``POST <callback_path>`` (the gateway's
    ``CALLBACK_URL``) and owns the :class:`ConnectionManager` the app sends
    through. Use it directly (``SSEGateway(app)``) or with an app factory
    (``sse = SSEGateway(); sse.init_app(app)``).

    Keyword arguments: ``gateway_url``, ``gateway_secret``,
    ``callback_secret``, ``publish`` (win over the settings above);
    ``callback_path``; ``identify`` (forwarded headers -> :class:`Identity`
    or None; default: every stream is ``local-user``); ``roster`` (accept
    roster callbacks).
    """

    def __init__(
        self,
        app: Optional[flask.Flask] = None,
        *,
        gateway_url: Optional[str] = None,
        gateway_secret: Optional[str] = None,
        callback_secret: Optional[str] = None,
        publish: Optional[bool] = None,
        callback_path: str = DEFAULT_CALLBACK_PATH,
        identify: Identify = local_user,
        roster: bool = True,
    ) -> None:
        self._gateway_url = gateway_url
        self._gateway_secret = gateway_secret
        self._callback_secret = callback_secret
        self._publish = publish
        self.callback_path = callback_path
        self.identify = identify
        self.roster = roster
        self._pending_connect: list[Observer] = []
        self._pending_disconnect: list[Observer] = []
        self._manager: Optional[ConnectionManager] = None
        self._handler: Optional[CallbackHandler] = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Reads the settings, builds the client, manager and callback
        handler, and registers the callback route on ``app``."""

        def setting(name: str) -> Optional[str]:
            value = app.config.get(name)
            return value if value is not None else os.environ.get(name)

        url = self._gateway_url or setting("SSE_GATEWAY_URL") or DEFAULT_GATEWAY_URL
        secret = self._gateway_secret if self._gateway_secret is not None else setting("SSE_GATEWAY_SECRET")
        publish = self._publish if self._publish is not None else _flag(setting("SSE_GATEWAY_PUBLISH") or "false")
        callback_secret = self._callback_secret
        if callback_secret is None:
            callback_secret = setting("SSE_CALLBACK_SECRET")
            if callback_secret is None and (setting("FLASK_ENV") or "") == "production":
                callback_secret = ""  # production without a secret refuses every callback
        manager = ConnectionManager(
            Client(url, secret or None), publish=publish
        )
        for fn in self._pending_connect:
            manager.register_on_connect(fn)
        for fn in self._pending_disconnect:
            manager.register_on_disconnect(fn)
        answer: AnswerMode = "routing" if publish else "empty"
        self._manager = manager
        self._handler = CallbackHandler(
            manager, secret=callback_secret, answer=answer, identify=self.identify, roster=self.roster
        )
        app.add_url_rule(self.callback_path, "sse_gateway_callback", self._serve_callback, methods=["POST"])
        app.extensions["sse_gateway"] = self

    def _serve_callback(self) -> flask.Response:
        req = flask.request
        status, body = self.handler.handle(
            req.query_string.decode("latin-1"), req.headers.get("Content-Type"), req.get_data(cache=False)
        )
        resp = flask.jsonify(body)
        resp.status_code = status
        return resp

    # -- access --------------------------------------------------------

    @property
    def manager(self) -> ConnectionManager:
        """The connection manager (after :meth:`init_app`)."""
        if self._manager is None:
            raise RuntimeError("SSEGateway.init_app(app) has not been called")
        return self._manager

    @property
    def handler(self) -> CallbackHandler:
        """The callback handler (after :meth:`init_app`)."""
        if self._handler is None:
            raise RuntimeError("SSEGateway.init_app(app) has not been called")
        return self._handler

    @property
    def client(self) -> Client:
        """The gateway client the manager sends through."""
        return self.manager.client

    # -- observers (usable as decorators, before or after init_app) ----

    def on_connect(self, fn: Observer) -> Observer:
        """Registers a connect observer, called with the ``request_id``."""
        if self._manager is None:
            self._pending_connect.append(fn)
        else:
            self._manager.register_on_connect(fn)
        return fn

    def on_disconnect(self, fn: Observer) -> Observer:
        """Registers a disconnect observer, called with the ``request_id``."""
        if self._manager is None:
            self._pending_disconnect.append(fn)
        else:
            self._manager.register_on_disconnect(fn)
        return fn

    # -- sending (see ConnectionManager) -------------------------------

    def send_to(self, request_id: str, name: Optional[str], data: Any) -> bool:
        """:meth:`ConnectionManager.send_to`."""
        return self.manager.send_to(request_id, name, data)

    def broadcast(self, name: Optional[str], data: Any, subject: Optional[str] = None) -> bool:
        """:meth:`ConnectionManager.broadcast`."""
        return self.manager.broadcast(name, data, subject)

    def connection_info(self, request_id: str) -> Optional[ConnectionInfo]:
        """:meth:`ConnectionManager.connection_info`."""
        return self.manager.connection_info(request_id)

    def bind_identity(self, request_id: str, identity: Identity) -> bool:
        """:meth:`ConnectionManager.bind_identity`."""
        return self.manager.bind_identity(request_id, identity)
