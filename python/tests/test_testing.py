"""The installed binary, `python -m sse_gateway`, and the `gateway` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from sse_gateway import binary_path
from sse_gateway.testing import GatewayStartError, start_gateway


def test_the_binary_is_installed_next_to_the_interpreter():
    installed = Path(sys.executable).parent / "sse-gateway"
    assert os.access(installed, os.X_OK), "pip install ./python puts sse-gateway on the venv's PATH"
    if "SSE_GATEWAY_BIN" not in os.environ:
        assert binary_path() == str(installed)


def test_python_m_sse_gateway_help_is_the_binarys_help():
    out = subprocess.run(
        [sys.executable, "-m", "sse_gateway", "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "CALLBACK_URL" in out.stdout and "--callback-url" in out.stdout


def test_the_fixture_starts_a_gateway_on_free_ports_and_stops_it_cleanly(gateway):
    gw = gateway("http://127.0.0.1:9/callback")
    assert gw.url != gw.internal_url
    assert requests.get(f"{gw.url}/healthz", timeout=5).json() == {"status": "ok"}
    assert gw.client.healthz() == {"status": "ok"}
    ready = requests.get(f"{gw.url}/readyz", timeout=5)
    assert ready.status_code == 200, "CALLBACK_URL was passed"
    assert gw.stop() == 0
    assert not gw.running()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{gw.url}/healthz", timeout=5)


def test_two_gateways_get_different_ports(gateway):
    a, b = gateway(), gateway()
    assert len({a.url, a.internal_url, b.url, b.internal_url}) == 4


def test_a_gateway_that_cannot_start_fails_with_its_message():
    with pytest.raises(GatewayStartError) as e:
        start_gateway(LISTEN_ADDR="not-an-address")
    assert "exited with 2 before listening" in str(e.value)
    assert "LISTEN_ADDR" in str(e.value), "the gateway's own message is in the error"


def test_the_shell_environment_does_not_reach_the_gateway(gateway, monkeypatch):
    monkeypatch.setenv("CALLBACK_URL", "http://127.0.0.1:9/from-the-shell")
    gw = gateway()
    ready = requests.get(f"{gw.url}/readyz", timeout=5)
    assert (ready.status_code, ready.json()["configured"]) == (503, False)


def test_the_listening_line_of_a_tls_gateway_is_recognised():
    from sse_gateway.testing import _LINE

    m = _LINE.search("sse-gateway listening on https://127.0.0.1:4443/")
    assert m is not None and m.group(2) == "https://127.0.0.1:4443/"
