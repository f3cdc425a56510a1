"""``sorterbot-cloud serve --debug``: the app under Werkzeug's interactive debugger.

No long-lived server is started: the debug path's WSGI app is called through Werkzeug's
test client (the real app on a real PostgreSQL, with :class:`FakeDetector` and
:class:`FakeEmbedder` since the models are not under test), and the command's choice of
address and app is read from what it hands to :func:`serve_until_signalled`.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from flask import Flask
from werkzeug.debug import DebuggedApplication
from werkzeug.test import Client

from sorterbot_cloud import service_cli
from sorterbot_cloud.api import create_app
from sorterbot_cloud.errors import BadRequest
from tests.integration.conftest_service import FakeDetector, FakeEmbedder


@pytest.fixture
def app(settings):
    app = create_app(settings, detector=FakeDetector(), embedder=FakeEmbedder())

    def boom():
        raise RuntimeError("a bug under the debugger")

    def refused():
        raise BadRequest("a refused request")

    app.add_url_rule("/test-boom", view_func=boom)
    app.add_url_rule("/test-refused", view_func=refused)
    yield app
    app.extensions["sorterbot"].close()


def test_debug_path_shows_the_interactive_debugger_on_an_unexpected_error(app):
    debugged = service_cli.debug_application(app)
    assert isinstance(debugged, DebuggedApplication) and debugged.evalex and debugged.app is app
    client = Client(debugged)
    response = client.get("/test-boom", headers={"Host": "127.0.0.1:5000"})
    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert "RuntimeError: a bug under the debugger" in page and "Werkzeug Debugger" in page
    assert "EVALEX = true" in page  # the console is on (behind the PIN)
    # the JSON contract is kept for everything but unexpected errors
    refused = client.get("/test-refused", headers={"Host": "127.0.0.1:5000"})
    assert refused.status_code == 400 and refused.headers["Content-Type"] == "application/problem+json"
    missing = client.get("/no-such-route", headers={"Host": "127.0.0.1:5000"})
    assert missing.status_code == 404 and missing.json["status"] == 404


def test_without_debug_an_unexpected_error_is_an_opaque_json_500(app):
    response = app.test_client().get("/test-boom")
    assert response.status_code == 500 and response.headers["Content-Type"] == "application/problem+json"
    assert "a bug under the debugger" not in response.get_data(as_text=True)


@pytest.fixture
def served(monkeypatch):
    """Run the ``serve`` command with a stand-in app; record what it would serve, where."""
    calls = []
    monkeypatch.setattr(service_cli, "_build_app", lambda settings: Flask("stand-in"))
    monkeypatch.setattr(service_cli, "_settings", lambda config: None)
    monkeypatch.setattr(service_cli, "serve_until_signalled",
                        lambda app, host, port, **kwargs: calls.append({"app": app, "host": host, "port": port,
                                                                        **kwargs}))

    def run(*args: str):
        result = CliRunner().invoke(service_cli.serve, list(args))
        assert result.exit_code == 0, result.output
        assert len(calls) == 1
        return calls.pop(), result.output

    return run


def test_serve_debug_wraps_the_app_on_loopback_and_warns(served):
    call, output = served("--debug")
    assert call["host"] == "127.0.0.1"
    assert isinstance(call["wsgi_app"], DebuggedApplication) and call["wsgi_app"].app is call["app"]
    assert "WARNING" in output and "debugger" in output and "--host" in output
    pin = call["wsgi_app"].pin
    assert pin and f"Debugger PIN (unlocks the in-browser console): {pin}" in output


def test_serve_debug_on_an_explicit_host_warns_and_trusts_it(served):
    call, output = served("--debug", "--host", "0.0.0.0", "--port", "5001")
    assert (call["host"], call["port"]) == ("0.0.0.0", 5001)
    assert "0.0.0.0" in call["wsgi_app"].trusted_hosts
    assert "WARNING" in output and "0.0.0.0" in output and "run code" in output


def test_serve_without_debug_serves_the_plain_app_on_loopback(served):
    call, output = served()
    assert call["host"] == "127.0.0.1" and "wsgi_app" not in call
    assert "WARNING" not in output
