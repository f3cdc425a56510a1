"""The operator console in a real browser: headless Chromium driven by Selenium, against
the real service (``create_app`` served over HTTP on the loopback interface) on a real
PostgreSQL database; the colour fakes of ``conftest_service`` stand in for the models,
which are not under test.

One browser and one server for the whole module. Every page is checked with axe-core
(``node_modules/axe-core``, installed by ``npm ci`` when missing): no violation of serious
or critical impact. Screenshots go to each test's ``tmp_path``.

Chromium and chromedriver must be installed (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` does it): without them these tests fail, they never skip.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from sorterbot_cloud.api import create_app
from sorterbot_cloud.config import Settings
from tests.integration.conftest_service import SESSION_FRAMES, FakeDetector, FakeEmbedder, frame_bytes, legacy_constants

ROOT = Path(__file__).resolve().parents[2]
AXE_JS = ROOT / "node_modules" / "axe-core" / "axe.min.js"
TOKEN = "browser-token-7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ARM, SESSION = "ARM001", "S-browser"
#: axe-core impacts that fail a page.
BLOCKING_IMPACTS = ("serious", "critical")
WAIT_S = 15


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE_JS.exists():
        npm = shutil.which("npm")
        assert npm is not None, "axe-core is not in node_modules and npm is not installed to install it"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return AXE_JS.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def service(pg_server, migrated_template, tmp_path_factory):
    """The real app on a database of this module, served by Werkzeug on 127.0.0.1."""
    from werkzeug.serving import make_server

    name = f"ui_browser_{uuid.uuid4().hex[:12]}"
    conninfo = pg_server.ensure_database(name, template=migrated_template)
    settings = Settings.load(environ={}, pg_conn=conninfo, data_dir=tmp_path_factory.mktemp("ui-data"),
                             api_token=TOKEN, pool_max_size=4)
    detector = FakeDetector()
    app = create_app(settings, detector=detector, embedder=FakeEmbedder())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_port}", "detector": detector, "app": app}
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["sorterbot_ops"].close()
        app.extensions["sorterbot"].close()
        pg_server.drop_database(name)


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    assert chromium and chromedriver, (
        "the browser tests need Chromium and chromedriver: apt-get install -y chromium chromium-driver (.ci/run does)"
    )
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def signed_in(browser, service):
    """The browser signed in through the login form (the test of the form itself is below)."""
    sign_in(browser, service["url"], TOKEN)
    WebDriverWait(browser, WAIT_S).until(EC.url_contains("/ui/"))
    assert "/ui/login" not in browser.current_url
    return browser


# ------------------------------------------------------------------ helpers
def sign_in(browser, url: str, token: str) -> None:
    browser.get(url + "/ui/login")
    field = browser.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    field.send_keys(Keys.ENTER)  # submit from the keyboard


def axe_violations(browser, axe_source: str) -> list[dict]:
    """Serious and critical axe-core violations of the page shown."""
    browser.execute_script(axe_source)
    results = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then((r) => done(r.violations), (e) => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "targets": [n["target"] for n in v["nodes"]][:5]}
        for v in results if v.get("impact") in BLOCKING_IMPACTS
    ]


def assert_accessible(browser, axe_source: str, tmp_path: Path, name: str) -> None:
    browser.save_screenshot(str(tmp_path / f"{name}.png"))
    violations = axe_violations(browser, axe_source)
    assert violations == [], f"axe-core on {browser.current_url}:\n{json.dumps(violations, indent=2)}"


def post_frame(url: str, image_name: str, session_id: str = SESSION) -> None:
    response = requests.post(f"{url}/v1/arms/{ARM}/sessions/{session_id}/frames/{image_name}",
                             data=frame_bytes(SESSION_FRAMES[image_name]), headers=AUTH | {"Content-Type": "image/png"},
                             timeout=30)
    assert response.status_code == 200, response.text


def wait_for(browser, condition, message: str):
    return WebDriverWait(browser, WAIT_S).until(condition, message)


# ------------------------------------------------------------------ tests
def test_login_refuses_a_wrong_token(browser, service, axe_source, tmp_path):
    browser.get(service["url"] + "/ui/arms")
    wait_for(browser, EC.url_contains("/ui/login"), "a signed-out visit should land on the login form")
    assert_accessible(browser, axe_source, tmp_path, "login")
    sign_in(browser, service["url"], "not-the-token")
    alert = wait_for(browser, EC.visibility_of_element_located((By.ID, "login-error")), "no error shown")
    assert alert.text == "That token is not valid."
    assert "/ui/login" in browser.current_url
    assert browser.get_cookie("sorterbot_console_token") is None
    assert_accessible(browser, axe_source, tmp_path, "login-refused")


def test_the_axe_check_catches_a_missing_text_alternative(browser, service, axe_source):
    browser.get(service["url"] + "/ui/login")
    browser.execute_script("const img = document.createElement('img'); img.src = 'x.png'; document.querySelector('main').append(img);")
    assert "image-alt" in {v["id"] for v in axe_violations(browser, axe_source)}


def test_keyboard_reaches_the_content_first(signed_in, service):
    signed_in.get(service["url"] + "/ui/")
    body = signed_in.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    focused = signed_in.switch_to.active_element
    assert focused.text == "Skip to content"
    focused.send_keys(Keys.ENTER)
    assert signed_in.switch_to.active_element.get_attribute("id") == "main"


def test_try_a_photo_draws_boxes_and_filters_them_without_the_model(signed_in, service, axe_source, tmp_path):
    photo = tmp_path / "1200.png"
    photo.write_bytes(frame_bytes(SESSION_FRAMES["1200.jpg"]))
    signed_in.get(service["url"] + "/ui/try")
    assert_accessible(signed_in, axe_source, tmp_path, "try-empty")
    calls = service["detector"].calls
    signed_in.find_element(By.ID, "file").send_keys(str(photo))
    wait_for(signed_in, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#try-frame g.box")) == 3, "3 boxes expected")
    boxes = signed_in.find_elements(By.CSS_SELECTOR, "#try-frame g.box")
    assert sorted(b.get_attribute("data-class") for b in boxes) == ["container", "item", "item"]
    assert service["detector"].calls == calls + 1
    shown = json.loads(signed_in.find_element(By.ID, "predict-json").text)
    api = requests.post(service["url"] + "/predict", data=photo.read_bytes(), headers=AUTH | {"Content-Type": "image/png"},
                        timeout=30).json()
    assert shown["detections"] == api["detections"] and shown["width_px"] == api["width_px"]
    assert_accessible(signed_in, axe_source, tmp_path, "try-detections")
    slider = signed_in.find_element(By.ID, "threshold")
    slider.send_keys(Keys.END)  # the keyboard moves the slider to 1.00: every fake score is 0.9
    wait_for(signed_in, lambda d: not d.find_elements(By.CSS_SELECTOR, "#try-frame g.box"), "boxes under 1.00 should go")
    assert signed_in.find_element(By.ID, "threshold-value").text == "1.00"
    assert signed_in.find_element(By.ID, "shown-count").text.startswith("0 of 3")
    slider.send_keys(Keys.HOME)
    wait_for(signed_in, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#try-frame g.box")) == 3, "boxes should return")
    assert service["detector"].calls == calls + 2  # the API call above; the slider never ran the model
    signed_in.save_screenshot(str(tmp_path / "try-threshold-0.png"))


def test_try_a_photo_takes_a_dropped_file(signed_in, service, tmp_path):
    signed_in.get(service["url"] + "/ui/try")
    dropped = frame_bytes(SESSION_FRAMES["1400.jpg"])
    signed_in.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const data = new DataTransfer(); data.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));",
        base64.b64encode(dropped).decode("ascii"),
    )
    wait_for(signed_in, lambda d: d.find_element(By.ID, "try-status").text.startswith("3 detections in dropped.png"),
             "the dropped file should be detected")
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#try-frame g.box")) == 3
    signed_in.save_screenshot(str(tmp_path / "try-dropped.png"))


def test_session_page_follows_the_arm_and_shows_objects_and_commands(signed_in, service, axe_source, tmp_path):
    url = service["url"]
    post_frame(url, "1200.jpg")
    signed_in.get(f"{url}/ui/arms/{ARM}/sessions/{SESSION}")
    wait_for(signed_in, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#frames li.thumbnail")) == 1, "1 frame expected")
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#frames li.thumbnail g.box")) == 3
    post_frame(url, "1400.jpg")  # the arm is still posting: the page polls
    wait_for(signed_in, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#frames li.thumbnail")) == 2, "the new frame should appear")
    wait_for(signed_in, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#frames g.box")) == 6, "6 boxes expected")
    assert signed_in.find_element(By.ID, "frames-summary").text == "2 frames, 6 detections."
    assert_accessible(signed_in, axe_source, tmp_path, "session-frames")

    button = signed_in.find_element(By.CSS_SELECTOR, ".compute-form button[type=submit]")
    assert button.text == "Compute the commands"
    button.click()
    wait_for(signed_in, EC.presence_of_element_located((By.CSS_SELECTOR, "svg.table-plot")), "the plot should appear")
    result = requests.get(f"{url}/v1/arms/{ARM}/sessions/{SESSION}/commands", headers=AUTH, timeout=30).json()
    assert len(result["objects"]) == 6 and len(result["commands"]) == 4
    plotted = signed_in.find_elements(By.CSS_SELECTOR, "svg.table-plot [data-object-id]")
    assert len(plotted) == len(result["objects"])
    assert sorted(p.get_attribute("data-class") for p in plotted) == ["container"] * 2 + ["item"] * 4
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "svg.table-plot [data-move]")) == len(result["commands"])
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#commands > li")) == len(result["commands"])
    assert signed_in.find_element(By.ID, "commands-summary").text == "4 commands, in move order."
    first_move = signed_in.find_element(By.CSS_SELECTOR, "#commands > li").text
    assert first_move.startswith(f"Pick item {result['commands'][0]['pick']['object_id']} ")
    plot = signed_in.find_element(By.CSS_SELECTOR, "figure.plot")
    signed_in.execute_script("arguments[0].scrollIntoView();", plot)
    plot.screenshot(str(tmp_path / "session-plot.png"))
    assert_accessible(signed_in, axe_source, tmp_path, "session-commands")

    cookies = {c["name"]: c["value"] for c in signed_in.get_cookies()}
    for link_text, mimetype in (("Download the overview (PNG)", "image/png"), ("Download the result (JSON)", "application/json")):
        href = signed_in.find_element(By.LINK_TEXT, link_text).get_attribute("href")
        response = requests.get(href, cookies=cookies, timeout=30)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith(mimetype)
    recompute = signed_in.find_element(By.CSS_SELECTOR, ".compute-form button[type=submit]")
    assert recompute.text == "Recompute the commands"


def test_arms_and_health_pages(signed_in, service, axe_source, tmp_path):
    url = service["url"]
    post_frame(url, "1200.jpg", session_id="S-listed")  # 2 items, 1 container
    trigger = requests.post(f"{url}/v1/arms/{ARM}/sessions/S-listed/commands", headers=AUTH, timeout=30,
                            json=legacy_constants())
    assert trigger.status_code == 200, trigger.text
    signed_in.get(url + "/ui/arms")
    row = signed_in.find_element(By.LINK_TEXT, "S-listed").find_element(By.XPATH, "./ancestor::tr").text
    assert f"{ARM} S-listed 1 3" in row and "2 moves, computed" in row
    assert_accessible(signed_in, axe_source, tmp_path, "arms")
    signed_in.get(service["url"] + "/ui/health")
    assert signed_in.find_element(By.ID, "database-status").text == "reachable"
    table = signed_in.find_element(By.ID, "models-table").text
    assert "FakeDetector" in table and "FakeEmbedder" in table
    assert_accessible(signed_in, axe_source, tmp_path, "health")
    signed_in.get(service["url"] + "/ui/")
    assert_accessible(signed_in, axe_source, tmp_path, "home")
