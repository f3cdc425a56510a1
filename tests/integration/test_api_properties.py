"""Property-based test of the routes: random parameters and bodies never give a 5xx.

Hypothesis draws a route, query parameters (valid, malformed, hostile), a content type
and a body (valid frames, their prefixes, random bytes, JSON values) and posts them
through the real app on a real PostgreSQL; every answer must be 2xx or a 4xx problem.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorterbot_cloud.api import create_app
from tests.integration.conftest_service import FakeDetector, FakeEmbedder, Rect, frame_bytes, legacy_constants

VALID_FRAME = frame_bytes([Rect("red", (10, 10, 40, 40)), Rect("green", (100, 100, 180, 180))])
VALID_JPEG = frame_bytes([Rect("blue", (10, 10, 40, 40))], fmt="jpeg")

ids = st.one_of(
    st.sampled_from(["ARM001", "s1", "sess_2020_04_25__10_12_33", "7", "", "a" * 65, "../x", "a b", "é", "%00", "a\nb"]),
    st.text(max_size=70),
)
image_names = st.one_of(
    st.sampled_from(["1200.jpg", "1000.png", "1.5.jpg", "x.jpg", "1200", "../1200.jpg", "/etc/passwd", "1200.JPG", ""]),
    st.text(max_size=20),
)
bodies = st.one_of(
    st.just(VALID_FRAME),
    st.just(VALID_JPEG),
    st.integers(0, len(VALID_FRAME)).map(lambda n: VALID_FRAME[:n]),
    st.integers(0, len(VALID_JPEG)).map(lambda n: VALID_JPEG[:n]),
    st.binary(max_size=300),
    st.just(json.dumps(legacy_constants()).encode()),
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=10),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
        max_leaves=10,
    ).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(list(legacy_constants()) + ["camera", "zero_pw"]),
        st.one_of(st.floats(), st.integers(), st.text(max_size=5), st.none()),
    ).map(lambda v: json.dumps(v, allow_nan=True).encode()),
)
content_types = st.sampled_from(
    [None, "image/jpeg", "image/png", "application/octet-stream", "application/json", "text/plain", "multipart/form-data"]
)
routes = st.sampled_from(
    ["/process_image", "/get_commands_of_session", "/predict", "/v1/predict", "v1-frame", "v1-commands", "v1-overview"]
)


@pytest.fixture
def client(make_settings, repository, archive):
    app = create_app(
        make_settings(max_body_bytes=50_000), detector=FakeDetector(), embedder=FakeEmbedder(),
        repository=repository, archive=archive,
    )
    client = app.test_client()
    # one stored session, so triggers reach the whole pipeline, not only validation
    assert client.post("/process_image?arm_id=ARM001&session_id=s1&image_name=1200.jpg", data=VALID_FRAME).status_code == 200
    return client


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=routes, arm_id=ids, session_id=ids, image_name=image_names, body=bodies, content_type=content_types,
       omit=st.sets(st.sampled_from(["arm_id", "session_id", "image_name"])))
def test_random_requests_never_give_5xx(client, route, arm_id, session_id, image_name, body, content_type, omit):
    query = {k: v for k, v in {"arm_id": arm_id, "session_id": session_id, "image_name": image_name}.items() if k not in omit}
    headers = {"Content-Type": content_type} if content_type else {}
    if route.startswith("v1-"):
        from urllib.parse import quote

        base = f"/v1/arms/{quote(arm_id, safe='')}/sessions/{quote(session_id, safe='')}"
        url = {"v1-frame": f"{base}/frames/{quote(image_name, safe='')}", "v1-commands": f"{base}/commands",
               "v1-overview": f"{base}/overview.png"}[route]
        response = client.post(url, data=body, headers=headers)
    else:
        response = client.post(route, query_string=query, data=body, headers=headers)
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["detail"]
