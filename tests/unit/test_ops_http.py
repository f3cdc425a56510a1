"""ops.init_app on a minimal Flask app: auth, request ids, structured logs, metrics."""

from __future__ import annotations

import io
import json
import logging

import pytest
from flask import Flask, jsonify
from prometheus_client.parser import text_string_to_metric_families

from sorterbot_cloud import ops
from sorterbot_cloud.config import Settings
from sorterbot_cloud.errors import Unauthorized
from sorterbot_cloud.ops import metrics
from sorterbot_cloud.ops.auth import check_bearer, token_of_header
from sorterbot_cloud.ops.logs import JsonFormatter, TextFormatter, configure_logging, new_request_id

TOKEN = "s3cret-token"
log = logging.getLogger("sorterbot_cloud.test_ops")


def make_app(**settings_overrides) -> Flask:
    """A stand-in for the service's app: a health route, a frame route, a failing route."""
    app = Flask("fake_service")
    state = ops.init_app(app, Settings(**settings_overrides), configure_logs=False)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.post("/process_image")
    def process_image():
        ops.bind_log_fields(arm_id="ARM001", session_id="S1")
        with metrics.stage_timer("decode"):
            pass
        log.info("frame processed", extra={"log_type": "process_image", "duration_ms": 1.5})
        return jsonify(detections=[])

    @app.get("/arms/<arm_id>/sessions/<session_id>/ping")
    def session_ping(arm_id, session_id):
        return jsonify(ok=True)

    @app.get("/ping")
    def plain_ping():
        return jsonify(ok=True)

    @app.get("/items/<int:item_id>")
    def item(item_id):
        return jsonify(item_id=item_id)

    app.extensions["test_state"] = state
    return app


@pytest.fixture
def auth_client():
    app = make_app(api_token=TOKEN)
    yield app.test_client()
    app.extensions["sorterbot_ops"].close()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"},
     {"Authorization": f"Bearer {TOKEN}x"}],
    ids=["missing", "wrong", "not-bearer", "empty", "longer"],
)
@pytest.mark.parametrize("path", ["/process_image", "/metrics", "/nowhere"], ids=["route", "metrics", "unknown"])
def test_auth_rejects_without_right_token(auth_client, headers, path):
    response = auth_client.post(path, headers=headers, data=b"x") if path == "/process_image" else auth_client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json(force=True)
    assert body["status"] == 401 and body["title"] == "Unauthorized" and body["detail"]


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "], ids=["plain", "lower-scheme", "spaces"])
def test_auth_accepts_right_token(auth_client, header):
    response = auth_client.post("/process_image", headers={"Authorization": header}, data=b"x")
    assert response.status_code == 200
    assert auth_client.get("/metrics", headers={"Authorization": header}).status_code == 200


def test_healthz_is_open_with_token_set(auth_client):
    assert auth_client.get("/healthz").status_code == 200
    assert auth_client.get("/healthz", headers={"Authorization": "Bearer wrong"}).status_code == 200


def test_no_token_configured_means_open():
    app = make_app()
    client = app.test_client()
    assert client.post("/process_image", data=b"x").status_code == 200
    assert client.get("/metrics").status_code == 200
    app.extensions["sorterbot_ops"].close()


@pytest.mark.parametrize(
    "header, expected",
    [(None, None), ("", None), ("Bearer abc", "abc"), ("Token abc", None), ("Bearer   ", None), ("BEARER abc", "abc")],
    ids=["none", "empty", "bearer", "other-scheme", "blank-token", "upper"],
)
def test_token_of_header(header, expected):
    assert token_of_header(header) == expected


def test_check_bearer_messages():
    with pytest.raises(Unauthorized, match="needs an 'Authorization: Bearer"):
        check_bearer(None, TOKEN)
    with pytest.raises(Unauthorized, match="not valid"):
        check_bearer("Bearer nope", TOKEN)
    check_bearer(f"Bearer {TOKEN}", TOKEN)


@pytest.fixture
def client_and_logs():
    app = make_app()
    stream = io.StringIO()
    handler = configure_logging(True, stream=stream)
    yield app.test_client(), stream
    logging.getLogger().removeHandler(handler)
    app.extensions["sorterbot_ops"].close()


@pytest.mark.parametrize(
    "sent, kept",
    [("abc-123.X:y", True), ("has space", False), ("x" * 129, False), ("", False), ("ä", False)],
    ids=["safe", "space", "too-long", "empty", "non-ascii"],
)
def test_request_id_echoed_or_replaced(client_and_logs, sent, kept):
    client, _ = client_and_logs
    response = client.get("/healthz", headers={"X-Request-ID": sent} if sent else {})
    got = response.headers["X-Request-ID"]
    if kept:
        assert got == sent
    else:
        assert got != sent and len(got) == 32 and int(got, 16) >= 0


def test_generated_request_ids_differ(client_and_logs):
    client, _ = client_and_logs
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


def test_json_logs_carry_request_id_and_bound_fields(client_and_logs):
    client, stream = client_and_logs
    response = client.post("/process_image", data=b"x", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [r for r in records if r.get("request_id") == "req-42"]
    service_record = next(r for r in mine if r["message"] == "frame processed")
    assert service_record["arm_id"] == "ARM001" and service_record["session_id"] == "S1"
    assert service_record["log_type"] == "process_image" and service_record["duration_ms"] == 1.5
    assert service_record["level"] == "INFO" and service_record["ts"].endswith("+00:00")
    access = next(r for r in mine if r["logger"] == "sorterbot_cloud.access")
    assert access["route"] == "/process_image" and access["status"] == 200 and access["duration_ms"] >= 0


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream_cls, formatter_cls", [(io.StringIO, JsonFormatter), (FakeTTY, TextFormatter)], ids=["pipe", "tty"])
def test_configure_logging_picks_json_off_terminal(stream_cls, formatter_cls):
    handler = configure_logging(None, stream=stream_cls())
    try:
        assert isinstance(handler.formatter, formatter_cls)
        assert sum(getattr(h, "_sorterbot_stream_handler", False) for h in logging.getLogger().handlers) == 1
    finally:
        logging.getLogger().removeHandler(handler)


def test_json_formatter_includes_exception():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    body = json.loads(JsonFormatter().format(record))
    assert body["message"] == "failed here" and "RuntimeError: boom" in body["exc"]


def test_new_request_id_outside_pattern():
    assert new_request_id("ok-1") == "ok-1"
    assert new_request_id("bad id") != "bad id"
    assert new_request_id("ok-1\n") != "ok-1\n"  # "$" alone would match before the newline


def _samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _get(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_per_route_and_stages():
    app = make_app()
    client = app.test_client()
    before = _samples(client.get("/metrics").get_data(as_text=True))
    for item_id in (1, 2, 3):
        assert client.get(f"/items/{item_id}").status_code == 200
    client.post("/process_image", data=b"x")
    client.get("/nowhere")
    metrics.observe_stage("detect", 0.2)
    metrics.set_model_load_time("detector", 1.25)
    after = _samples(client.get("/metrics").get_data(as_text=True))

    def delta(name, **labels):
        return _get(after, name, **labels) - _get(before, name, **labels)

    # one series per route template, not per URL
    assert delta("sorterbot_http_requests_total", method="GET", route="/items/<int:item_id>", status="200") == 3
    assert delta("sorterbot_http_requests_total", method="POST", route="/process_image", status="200") == 1
    assert delta("sorterbot_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert delta("sorterbot_http_request_duration_seconds_count", method="GET", route="/items/<int:item_id>") == 3
    assert delta("sorterbot_stage_duration_seconds_count", stage="decode") == 1
    assert delta("sorterbot_stage_duration_seconds_count", stage="detect") == 1
    assert delta("sorterbot_stage_duration_seconds_sum", stage="detect") == pytest.approx(0.2)
    assert _get(after, "sorterbot_model_load_seconds", model="detector") == 1.25
    for stage in ("decode", "detect", "embed", "store", "trigger"):
        assert ("sorterbot_stage_duration_seconds_count", (("stage", stage),)) in after
    app.extensions["sorterbot_ops"].close()


@pytest.mark.parametrize("name, seconds, match", [("detecc", 0.1, "stage must be one of"), ("detect", -1.0, "must be >= 0")],
                         ids=["unknown-stage", "negative"])
def test_observe_stage_rejects_bad_input(name, seconds, match):
    with pytest.raises(ValueError, match=match):
        metrics.observe_stage(name, seconds)


def test_stage_timer_records_when_block_raises():
    before = _count_of("embed")
    with pytest.raises(KeyError):
        with metrics.stage_timer("embed"):
            raise KeyError("x")
    assert _count_of("embed") == before + 1


def _count_of(stage: str) -> float:
    text = metrics.render()[0].decode()
    return _get(_samples(text), "sorterbot_stage_duration_seconds_count", stage=stage)


def test_model_load_timer_skips_failed_load():
    metrics.set_model_load_time("embedder", 3.0)
    with pytest.raises(OSError):
        with metrics.model_load_timer("embedder"):
            raise OSError("no weights")
    assert _get(_samples(metrics.render()[0].decode()), "sorterbot_model_load_seconds", model="embedder") == 3.0
    with metrics.model_load_timer("embedder"):
        pass
    assert _get(_samples(metrics.render()[0].decode()), "sorterbot_model_load_seconds", model="embedder") < 3.0


@pytest.mark.parametrize(
    "path, expected",
    [("/arms/ARM001/sessions/S1/ping", {"arm_id": "ARM001", "session_id": "S1", "log_type": "session_ping"}),
     ("/arms/ARM001/sessions/bad%20id/ping", {"arm_id": "ARM001"}),
     ("/ping?arm_id=ARM002&session_id=S2", {"arm_id": "ARM002", "session_id": "S2", "log_type": "plain_ping"}),
     ("/ping", {})],
    ids=["url-ids", "malformed-id", "query-ids", "no-ids"],
)
def test_access_record_names_the_session(client_and_logs, path, expected):
    client, stream = client_and_logs
    assert client.get(path, headers={"X-Request-ID": "acc-1"}).status_code == 200
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = next(r for r in records if r["logger"] == "sorterbot_cloud.access" and r["request_id"] == "acc-1")
    assert {k: access[k] for k in ("arm_id", "session_id", "log_type") if k in access} == expected
