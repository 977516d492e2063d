"""A small Flask backend behind sse-gateway: a notes board with live updates.

- ``POST /api/sse/callback``: the gateway's ``CALLBACK_URL`` (from
  ``sse_gateway.flask.SSEGateway``).
- Every new stream gets a targeted ``welcome`` event from a connect observer
  (sent during the connect callback, so the gateway writes it before
  ``ready``); a disconnect observer records who left.
- ``POST /api/notes`` ``{"text": ...}`` stores a note and broadcasts
  ``note_added`` to every stream.
- ``POST /api/notify/<request_id>`` ``{"text": ...}`` sends ``notice`` to one
  browser; 404 when it is not connected (any more).

Run it (the gateway calls back on port 5000; streams on port 3000)::

    pip install ./python flask
    CALLBACK_URL=http://127.0.0.1:5000/api/sse/callback PORT=3000 INTERNAL_PORT=3001 sse-gateway &
    SSE_GATEWAY_URL=http://127.0.0.1:3001 flask --app examples/flask_app/app.py run --port 5000
    curl -N 'http://127.0.0.1:3000/stream?request_id=demo1'
    curl -X POST localhost:5000/api/notes -H 'Content-Type: application/json' -d '{"text":"hi"}'
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Mapping, Optional

from flask import Flask, jsonify, request

from sse_gateway.flask import SSEGateway


def create_app(config: Optional[Mapping[str, Any]] = None) -> Flask:
    """The app. ``config`` overrides ``app.config`` (e.g. ``SSE_GATEWAY_URL``,
    ``SSE_CALLBACK_SECRET``); unset keys fall back to the environment."""
    app = Flask(__name__)
    app.config.update(config or {})
    sse = SSEGateway(app)
    notes: List[Dict[str, Any]] = []
    left: List[str] = []
    lock = threading.Lock()
    app.extensions["notes"] = notes
    app.extensions["left"] = left

    @sse.on_connect
    def welcome(request_id: str) -> None:
        with lock:
            count = len(notes)
        sse.send_to(request_id, "welcome", {"request_id": request_id, "notes": count})

    @sse.on_disconnect
    def remember_leaving(request_id: str) -> None:
        with lock:
            left.append(request_id)

    @app.post("/api/notes")
    def add_note() -> Any:
        body = request.get_json(silent=True) or {}
        text = body.get("text")
        if not isinstance(text, str) or not text:
            return jsonify({"error": "text: a non-empty string is required"}), 400
        with lock:
            note = {"id": len(notes) + 1, "text": text}
            notes.append(note)
        delivered = sse.broadcast("note_added", note)
        return jsonify({"note": note, "delivered": delivered}), 201

    @app.post("/api/notify/<request_id>")
    def notify(request_id: str) -> Any:
        text = (request.get_json(silent=True) or {}).get("text", "")
        if not sse.send_to(request_id, "notice", {"text": text}):
            return jsonify({"error": f"{request_id} is not connected"}), 404
        return jsonify({"sent": True})

    return app

