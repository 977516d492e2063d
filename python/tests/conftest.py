"""Shared helpers of the package's tests: a recording stand-in for the
gateway client (unit tests of the manager and the callback), and a clock."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest

from sse_gateway import GatewayError


class RecordingClient:
    """Stands in for :class:`sse_gateway.Client` in unit tests: records
    calls; tokens in ``gone`` answer 404 like the gateway; ``fail`` makes
    every call a 500; ``publish_answer`` is what publish returns or raises."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, ...]] = []
        self.gone: Set[str] = set()
        self.fail = False
        self.publish_error: Optional[GatewayError] = None
        self.matched: Dict[str, int] = {}
        self.lock = threading.Lock()

    def _check(self, token: str) -> None:
        if self.fail:
            raise GatewayError(500, "INTERNAL", "boom")
        if token in self.gone:
            raise GatewayError(404, "TOKEN_NOT_FOUND", "Token not found")

    def send(self, token: str, name: Optional[str], data: Any, close: bool = False) -> str:
        with self.lock:
            self.calls.append(("send", token, name or ""))
        self._check(token)
        return "ok"

    def end(self, token: str) -> str:
        with self.lock:
            self.calls.append(("end", token))
        self._check(token)
        return "ok"

    def publish(self, key: str, name: Optional[str], data: Any, close: bool = False) -> int:
        with self.lock:
            self.calls.append(("publish", key, name or ""))
        if self.publish_error is not None:
            raise self.publish_error
        return self.matched.get(key, 1)

    def targets(self) -> List[str]:
        return sorted(c[1] for c in self.calls if c[0] == "send")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rec() -> RecordingClient:
    return RecordingClient()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
