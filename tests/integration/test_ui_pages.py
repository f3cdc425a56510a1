"""The operator console through Flask's test client (real app, real PostgreSQL; the colour
fakes of ``conftest_service`` stand in for the models, which are not under test): access
control and its cookie, CSRF, pagination and the repository's read queries behind it, the
compute form, downloads and the health page. The pages in a real browser:
``test_ui_browser.py``."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from sorterbot_cloud.api import create_app
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.structures import Detections, Frame
from sorterbot_cloud.ui import TOKEN_COOKIE
from sorterbot_cloud.ui.plot import table_svg
from tests.integration.conftest_service import (
    SESSION_FRAMES,
    FakeArchive,
    FakeDetector,
    FakeEmbedder,
    frame_bytes,
    legacy_constants,
)

TOKEN = "console-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SESSION_URL = "/ui/arms/ARM001/sessions/S1"


@pytest.fixture
def make_app(make_settings, repository):
    apps = []

    def make(**overrides):
        app = create_app(make_settings(**overrides), detector=FakeDetector(), embedder=FakeEmbedder(),
                         repository=repository, archive=FakeArchive())
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["sorterbot_ops"].close()


@pytest.fixture
def client(make_app):
    return make_app(api_token=TOKEN).test_client()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(client) -> None:
    page = client.get("/ui/login")
    response = client.post("/ui/login", data={"token": TOKEN, "csrf_token": csrf_of(page.get_data(as_text=True))})
    assert response.status_code == 303, response.get_data(as_text=True)


def post_session(client, arm_id="ARM001", session_id="S1", frames=SESSION_FRAMES):
    for name, rects in frames.items():
        response = client.post(f"/process_image?arm_id={arm_id}&session_id={session_id}&image_name={name}",
                               data=frame_bytes(rects), content_type="image/png", headers=AUTH)
        assert response.status_code == 200, response.get_json()


def set_cookies(response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}


# ------------------------------------------------------------------ access control
@pytest.mark.parametrize("path", ["/ui/", "/ui/arms", "/ui/try", "/ui/health", SESSION_URL])
def test_pages_without_the_token_send_to_the_login_form(client, path):
    response = client.get(path)
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/ui/login?next=")
    assert path.rstrip("/") in response.headers["Location"].replace("%2F", "/")


@pytest.mark.parametrize("path", [SESSION_URL + "/frames.json", SESSION_URL + "/result.json",
                                  SESSION_URL + "/overview.png", "/ui/static/console.js"])
def test_data_routes_without_the_token_answer_the_401_problem(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_login_refuses_a_wrong_token_and_sets_no_cookie(client):
    page = client.get("/ui/login")
    assert page.status_code == 401  # the login form is what an unauthenticated request gets
    response = client.post("/ui/login", data={"token": "not-the-token", "csrf_token": csrf_of(page.get_data(as_text=True))})
    assert response.status_code == 401
    assert "That token is not valid." in response.get_data(as_text=True)
    assert TOKEN_COOKIE not in set_cookies(response)
    assert client.get("/ui/arms").status_code == 303  # still signed out


def test_login_keeps_the_token_in_a_strict_http_only_cookie_and_follows_next(client):
    page = client.get("/ui/login?next=/ui/health")
    html = page.get_data(as_text=True)
    assert 'name="next" value="/ui/health"' in html
    response = client.post("/ui/login", data={"token": TOKEN, "csrf_token": csrf_of(html), "next": "/ui/health"})
    assert response.status_code == 303 and response.headers["Location"] == "/ui/health"
    cookie = set_cookies(response)[TOKEN_COOKIE]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    session_cookie = set_cookies(response)["sorterbot_console_session"]
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie and "Path=/ui" in session_cookie
    assert client.get("/ui/health").status_code == 200
    assert client.get("/ui/login").status_code == 200  # signed in: the page says so


@pytest.mark.parametrize("target", ["https://example.org/ui/", "//example.org/ui/", "/v1/arms", "/ui/../v1/x"],
                         ids=["other-host", "scheme-relative", "not-console", "dot-segments"])
def test_login_never_redirects_off_the_console(client, target):
    page = client.get("/ui/login")
    response = client.post("/ui/login", data={"token": TOKEN, "csrf_token": csrf_of(page.get_data(as_text=True)),
                                              "next": target})
    assert response.status_code == 303 and response.headers["Location"] == "/ui/"


def test_a_wrong_cookie_is_refused_and_forgotten(client):
    client.set_cookie(TOKEN_COOKIE, "stale-token", path="/ui")
    response = client.get("/ui/arms")
    assert response.status_code == 303 and response.headers["Location"].startswith("/ui/login")
    assert "Max-Age=0" in set_cookies(response)[TOKEN_COOKIE] or "expires=" in set_cookies(response)[TOKEN_COOKIE].lower()


def test_logout_forgets_the_cookie(client):
    sign_in(client)
    page = client.get("/ui/arms").get_data(as_text=True)
    response = client.post("/ui/logout", data={"csrf_token": csrf_of(page)})
    assert response.status_code == 303
    assert client.get("/ui/arms").status_code == 303


def test_console_answers_carry_a_content_security_policy(client):
    sign_in(client)
    for path in ("/ui/arms", "/ui/login", "/ui/static/console.js"):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"], path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
        assert headers["X-Content-Type-Options"] == "nosniff", path
    assert "Content-Security-Policy" not in client.get("/readyz", headers=AUTH).headers  # the API is unchanged


def test_the_cookie_is_no_credential_outside_the_console(client):
    sign_in(client)
    client.set_cookie(TOKEN_COOKIE, TOKEN, path="/")  # even if a browser sent it there
    assert client.get("/readyz").status_code == 401
    assert client.post("/predict", data=frame_bytes(SESSION_FRAMES["1200.jpg"]), content_type="image/png").status_code == 401


def test_without_an_api_token_the_console_is_open(make_app):
    client = make_app().test_client()
    assert client.get("/ui/arms").status_code == 200
    assert "Access control is off" in client.get("/ui/login").get_data(as_text=True)


# ------------------------------------------------------------------ CSRF
def test_login_without_the_csrf_token_is_refused(client):
    response = client.post("/ui/login", data={"token": TOKEN})
    assert response.status_code == 400
    assert TOKEN_COOKIE not in set_cookies(response)


def test_compute_without_the_csrf_token_changes_nothing(client, repository):
    sign_in(client)
    post_session(client)
    response = client.post(SESSION_URL + "/commands", data={"constants": json.dumps(legacy_constants())})
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert repository.latest_commands("ARM001", "S1") is None


def test_console_predict_needs_the_csrf_header_and_answers_what_predict_answers(client):
    sign_in(client)
    data = frame_bytes(SESSION_FRAMES["1200.jpg"])
    refused = client.post("/ui/predict", data={"file": (_io(data), "1200.png", "image/png")})
    assert refused.status_code == 400 and refused.mimetype == "application/problem+json"
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/ui/try").get_data(as_text=True)).group(1)
    console = client.post("/ui/predict", data={"file": (_io(data), "1200.png", "image/png")}, headers={"X-CSRFToken": token})
    api = client.post("/predict", data=data, content_type="image/png", headers=AUTH)
    assert console.status_code == 200 and api.status_code == 200
    strip = lambda body: {k: v for k, v in body.items() if k != "timings_ms"}  # noqa: E731
    assert strip(console.get_json()) == strip(api.get_json())
    assert len(console.get_json()["detections"]) == 3


def test_console_predict_waits_in_the_ingest_line(make_app):
    app = make_app(api_token=TOKEN, ingest_max_in_flight=1, ingest_max_queued=0)
    client = app.test_client()
    sign_in(client)
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/ui/try").get_data(as_text=True)).group(1)
    control = app.extensions["sorterbot_admission"]
    assert control.acquire() is None  # a frame being detected holds the only slot
    try:
        busy = client.post("/ui/predict", data={"file": (_io(frame_bytes(SESSION_FRAMES["1200.jpg"])), "f.png", "image/png")},
                           headers={"X-CSRFToken": token})
        assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
        assert "1 of 1 model requests running, 0 of at most 0 waiting" in client.get("/ui/health").get_data(as_text=True)
    finally:
        control.release()
    done = client.post("/ui/predict", data={"file": (_io(frame_bytes(SESSION_FRAMES["1200.jpg"])), "f.png", "image/png")},
                       headers={"X-CSRFToken": token})
    assert done.status_code == 200 and control.in_flight == 0


def test_api_posts_need_no_csrf_token(client):
    post_session(client)  # bearer header, no CSRF token: the arms' routes are unchanged
    response = client.post("/v1/arms/ARM001/sessions/S1/commands", json=legacy_constants(), headers=AUTH)
    assert response.status_code == 200


def _io(data: bytes):
    import io

    return io.BytesIO(data)


# ------------------------------------------------------------------ compute form
def test_first_compute_uses_the_form_constants_then_the_stored_ones(client, repository):
    sign_in(client)
    post_session(client)
    page = client.get(SESSION_URL).get_data(as_text=True)
    assert "No commands were computed" in page and 'name="constants"' in page
    constants = legacy_constants(arm_radius=1300.0)
    response = client.post(SESSION_URL + "/commands", data={"csrf_token": csrf_of(page), "constants": json.dumps(constants)})
    assert response.status_code == 303
    first = repository.latest_commands("ARM001", "S1")
    assert first["constants"]["arm_radius"] == 1300.0
    page = client.get(SESSION_URL).get_data(as_text=True)
    assert "Computed 4 commands for 6 objects." in page
    assert len(re.findall(r'<li>Pick item', page)) == len(first["result"]["commands"]) == 4
    assert 'name="constants"' not in page  # recompute takes the stored constants
    client.post(SESSION_URL + "/commands", data={"csrf_token": csrf_of(page), "constants": json.dumps(legacy_constants())})
    second = repository.latest_commands("ARM001", "S1")
    assert second["command_id"] > first["command_id"] and second["constants"] == first["constants"]
    assert second["result"]["wire"] == first["result"]["wire"]


@pytest.mark.parametrize(
    ("constants", "status", "message"),
    [("", 400, "the arm constants are empty"), ("{nope", 400, "not valid JSON"), ("[1, 2]", 400, "must be a JSON object"),
     (json.dumps(legacy_constants(arm_id="ARM002")), 400, "is not the arm of the request"),
     (json.dumps(legacy_constants(arm_radius=-5)), 422, "arm_radius")],
    ids=["empty", "not-json", "not-object", "other-arm", "out-of-range"],
)
def test_bad_form_constants_answer_an_error_page_and_store_nothing(client, repository, constants, status, message):
    sign_in(client)
    post_session(client)
    page = client.get(SESSION_URL).get_data(as_text=True)
    response = client.post(SESSION_URL + "/commands", data={"csrf_token": csrf_of(page), "constants": constants})
    assert response.status_code == status and response.mimetype == "text/html"
    assert message in response.get_data(as_text=True)
    assert repository.latest_commands("ARM001", "S1") is None


def test_downloads_are_the_v1_answers(client):
    sign_in(client)
    post_session(client)
    assert client.get(SESSION_URL + "/result.json").status_code == 404  # nothing computed yet
    client.post("/v1/arms/ARM001/sessions/S1/commands", json=legacy_constants(), headers=AUTH)
    result = client.get(SESSION_URL + "/result.json")
    assert result.headers["Content-Disposition"].startswith("attachment")
    assert result.get_json() == client.get("/v1/arms/ARM001/sessions/S1/commands", headers=AUTH).get_json()
    png = client.get(SESSION_URL + "/overview.png")
    assert png.mimetype == "image/png" and png.data == client.get("/v1/arms/ARM001/sessions/S1/overview.png", headers=AUTH).data


def test_frames_json_and_archived_frames(client):
    sign_in(client)
    post_session(client, frames={"1200.jpg": SESSION_FRAMES["1200.jpg"]})
    first = client.get(SESSION_URL + "/frames.json").get_json()
    assert first["n_frames"] == 1 and first["n_detections"] == 3
    assert [d["class"] for d in first["frames"][0]["detections"]].count("container") == 1
    image = client.get(first["frames"][0]["image_url"])
    assert image.status_code == 200 and image.data == frame_bytes(SESSION_FRAMES["1200.jpg"])
    post_session(client, frames={"1400.jpg": SESSION_FRAMES["1400.jpg"]})
    second = client.get(SESSION_URL + "/frames.json").get_json()
    assert second["n_frames"] == 2 and second["version"] != first["version"]
    assert client.get(SESSION_URL + "/frames/1600.jpg").status_code == 404


def test_unknown_session_is_a_404_page(client):
    sign_in(client)
    response = client.get("/ui/arms/ARM001/sessions/nope")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "no frame stored" in response.get_data(as_text=True)


# ------------------------------------------------------------------ arms and sessions, pagination
def store_sessions(repository, arm_id: str, n: int) -> list[str]:
    names = [f"{arm_id}-s{i:02d}" for i in range(n)]
    for name in names:  # one transaction each: created in this order
        repository.save_frame(Frame(arm_id, name, "1200.jpg", 320, 240), Detections.empty(), None, None)
    return names


def test_session_page_query_pages_newest_first_with_commands(repository):
    older = store_sessions(repository, "ARM_A", 3)
    newer = store_sessions(repository, "ARM_B", 2)
    repository.save_commands("ARM_A", older[1], {"arm_radius": 1}, {"commands": [{}, {}, {}]})
    page = repository.session_page(limit=4)
    assert page["total"] == 5
    assert [s["session_id"] for s in page["sessions"]] == newer[::-1] + older[::-1][:2]
    rest = repository.session_page(limit=4, offset=4)["sessions"]
    assert [s["session_id"] for s in rest] == [older[0]]
    by_name = {s["session_id"]: s for s in repository.session_page(limit=10)["sessions"]}
    assert by_name[older[1]]["n_triggers"] == 1 and by_name[older[1]]["n_commands"] == 3
    assert by_name[older[1]]["commands_at"] is not None
    assert by_name[older[0]]["n_triggers"] == 0 and by_name[older[0]]["n_commands"] is None
    assert by_name[older[0]]["n_frames"] == 1 and by_name[older[0]]["n_detections"] == 0
    only_a = repository.session_page("ARM_A", limit=10)
    assert only_a["total"] == 3 and {s["arm_id"] for s in only_a["sessions"]} == {"ARM_A"}
    assert repository.session_page(limit=10, offset=10) == {"total": 5, "sessions": []}


def test_list_arms_counts_sessions_newest_arm_first(repository):
    store_sessions(repository, "ARM_A", 3)
    store_sessions(repository, "ARM_B", 1)
    arms = repository.list_arms()
    assert [(a["arm_id"], a["n_sessions"]) for a in arms] == [("ARM_B", 1), ("ARM_A", 3)]
    assert all(a["last_session_at"] is not None for a in arms)


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"arm_id": "bad id"}],
                         ids=["zero-limit", "huge-limit", "negative-offset", "bad-arm"])
def test_session_page_query_refuses_bad_arguments(repository, kwargs):
    with pytest.raises(BadRequest):
        repository.session_page(**kwargs)


def test_arms_page_paginates_twenty_a_page(client, repository):
    names = store_sessions(repository, "ARM_A", 23)
    sign_in(client)
    first = client.get("/ui/arms").get_data(as_text=True)
    listed = re.findall(r'/ui/arms/ARM_A/sessions/(ARM_A-s\d\d)"', first)
    assert listed == names[::-1][:20]
    assert "page 1 of 2" in first and 'rel="next"' in first and 'rel="prev"' not in first
    second = client.get("/ui/arms?page=2").get_data(as_text=True)
    assert re.findall(r'/ui/arms/ARM_A/sessions/(ARM_A-s\d\d)"', second) == names[::-1][20:]
    assert 'rel="prev"' in second and 'rel="next"' not in second
    assert client.get("/ui/arms?page=3").status_code == 400
    assert client.get("/ui/arms?page=0").status_code == 400
    assert client.get("/ui/arms?page=x").status_code == 400
    assert client.get("/ui/arms?arm=bad%20id").status_code == 400


def test_arms_page_says_whether_commands_were_computed(client):
    sign_in(client)
    post_session(client, session_id="S1")
    post_session(client, session_id="S2")
    client.post("/v1/arms/ARM001/sessions/S1/commands", json=legacy_constants(), headers=AUTH)
    html = client.get("/ui/arms?arm=ARM001").get_data(as_text=True)
    rows = dict(re.findall(r'sessions/(S\d)">S\d</a></td>.*?<td>(\d+ moves, computed|not computed)', html, re.S))
    assert rows == {"S1": "4 moves, computed", "S2": "not computed"}


# ------------------------------------------------------------------ health and plot
def test_health_page_names_the_models_and_their_files(make_app, tmp_path):
    weights = tmp_path / "detector.pt"
    weights.write_bytes(b"not really weights")
    client = make_app(api_token=TOKEN, detector_weights=weights).test_client()
    sign_in(client)
    html = client.get("/ui/health").get_data(as_text=True)
    assert "FakeDetector" in html and "FakeEmbedder" in html
    assert hashlib.sha256(b"not really weights").hexdigest() in html
    assert "18 bytes" in html
    assert 'id="database-status">reachable<' in html
    assert "none in this mode" in html


class FakeGraphDetector(FakeDetector):
    """The colour fake, naming the graph file it would run from as an ONNX Runtime detector does."""

    def __init__(self, graph_path):
        super().__init__()
        self.graph_path = graph_path


def test_health_page_names_the_graph_an_onnx_model_runs_from(make_settings, repository, tmp_path):
    graph = tmp_path / "detector.onnx"
    graph.write_bytes(b"graph bytes")
    app = create_app(make_settings(), detector=FakeGraphDetector(graph), embedder=FakeEmbedder(),
                     repository=repository, archive=FakeArchive())
    try:
        html = app.test_client().get("/ui/health").get_data(as_text=True)
    finally:
        app.extensions["sorterbot_ops"].close()
    assert str(graph) in html and hashlib.sha256(b"graph bytes").hexdigest() in html


def test_table_svg_draws_one_shape_per_object_and_one_arrow_per_command():
    result = {
        "objects": [
            {"object_id": 1, "class": "item", "r_mm": 200.0, "theta_deg": 10.0, "cluster_id": 0},
            {"object_id": 2, "class": "item", "r_mm": 250.0, "theta_deg": -20.0, "cluster_id": 1},
            {"object_id": 3, "class": "container", "r_mm": 300.0, "theta_deg": 40.0, "cluster_id": None},
            {"object_id": 4, "class": "container", "r_mm": 300.0, "theta_deg": -40.0, "cluster_id": None},
        ],
        "commands": [
            {"pick": {"object_id": 1}, "place": {"object_id": 3}, "cluster_id": 0},
            {"pick": {"object_id": 2}, "place": {"object_id": 4}, "cluster_id": 1},
        ],
    }
    svg = str(table_svg(result))
    assert svg.count("data-object-id=") == 4 and svg.count('data-class="container"') == 2
    assert re.findall(r'data-move="(\d)"', svg) == ["1", "2"]
    assert 'role="img"' in svg and "<title" in svg and "<desc" in svg
    # theta 10 degrees at 200 mm: x = 197.0, y = 34.7 (drawn at svg y = -34.7)
    assert 'cx="197.0" cy="-34.7"' in svg


def test_templates_and_static_files_are_package_data():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert "ui/templates/ui/*.html" in pyproject and "ui/static/*" in pyproject
