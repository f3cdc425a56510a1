"""The console's routes (blueprint :data:`sorterbot_cloud.ui.bp`, prefix ``/ui``).

Pages: ``/ui/`` (home), ``/ui/login``, ``/ui/try``, ``/ui/arms``,
``/ui/arms/<arm_id>/sessions/<session_id>``, ``/ui/health``. JSON and files for the pages'
scripts and links: ``POST /ui/predict`` (what ``POST /predict`` answers), a session's
``frames.json`` (polled by the session page), its archived frames, its overview PNG and
result JSON (the ``GET /v1/.../overview.png`` and ``GET /v1/.../commands`` views). Forms
that change something: log in, log out, compute a session's commands.

Every route needs the API token when one is set (see :mod:`sorterbot_cloud.ui`); every
POST needs the CSRF token.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from flask import (
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import CSRFError
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from sorterbot_cloud.api import admission, v1
from sorterbot_cloud.api.errors import handle_http_exception, handle_project_error
from sorterbot_cloud.api.health import readiness_checks
from sorterbot_cloud.api.state import state
from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.errors import BadRequest, SorterBotError, Unauthorized, UnknownSession
from sorterbot_cloud.ids import check_body_arm_id, validate_id, validate_image_name
from sorterbot_cloud.ops.auth import check_bearer
from sorterbot_cloud.storage import DiskArchive

from .blueprint import TOKEN_COOKIE, TOKEN_FIELD, URL_PREFIX, bp, csrf
from .plot import GROUP_COLOURS, container_groups, group_colour, table_svg

#: Sessions per page of ``/ui/arms``.
PAGE_SIZE = 20
#: How often the session page asks for new frames (milliseconds).
POLL_INTERVAL_MS = 2000
#: Endpoints that answer JSON or files: a refused request keeps its problem body.
DATA_ENDPOINTS = frozenset({"ui.predict", "ui.session_frames", "ui.frame_image", "ui.overview_png",
                            "ui.result_json", "ui.static"})
SESSION = "/arms/<arm_id>/sessions/<session_id>"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# ------------------------------------------------------------------ access control
@bp.before_request
def _require_token_and_csrf() -> None:
    """The token (already checked by ops when installed; checked here too) and, on a POST, the CSRF token."""
    token = state().settings.api_token
    if token:
        check_bearer(request.headers.get("Authorization"), token)
    if request.method not in _SAFE_METHODS:
        csrf.protect()


#: Content Security Policy of the console's answers: scripts only from ``/ui/static``, no
#: plug-ins, no framing, forms only to this site; images also from ``blob:`` (the try page
#: shows the chosen file through an object URL) and inline styles (the page's own sheet).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
                           "frame-ancestors 'none'; form-action 'self'")


@bp.after_request
def _console_headers(response: Response) -> Response:
    """Hardening headers on every console answer; a page refused for its token gets the login form."""
    response = _login_for_refused_pages(response)
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _login_for_refused_pages(response: Response) -> Response:
    """A page request refused for its token gets the login form (or is sent to it)."""
    if response.status_code != 401 or request.endpoint in DATA_ENDPOINTS:
        return response
    if request.endpoint == "ui.login":
        error = "That token is not valid." if request.method == "POST" else None
        page = current_app.make_response((render_template("ui/login.html", error=error, next=_next_path(),
                                                          token_required=True, signed_in=False), 401))
        page.headers["WWW-Authenticate"] = response.headers.get("WWW-Authenticate", 'Bearer realm="sorterbot"')
    else:
        target = request.full_path.rstrip("?") if request.method == "GET" else request.referrer
        page = redirect(url_for("ui.login", next=_safe_next(target)), code=303)
    if TOKEN_COOKIE in request.cookies:  # a stale or wrong token: forget it
        page.delete_cookie(TOKEN_COOKIE, path=URL_PREFIX)
    return page


def _safe_next(path: str | None) -> str | None:
    """``path`` when it is a console path of this site (no scheme, host or ``//``), else None."""
    if not path:
        return None
    if "://" in path:  # a referrer: keep only its path on this host
        host_url = request.host_url
        if not path.startswith(host_url):
            return None
        path = "/" + path[len(host_url):]
    segments = path.split("?", 1)[0].split("/")
    if (
        (path == URL_PREFIX or path.startswith(URL_PREFIX + "/"))
        and "//" not in path and "\\" not in path and "%2e" not in path.lower()
        and not any(s in (".", "..") for s in segments)  # a browser would resolve them off the console
    ):
        return path
    return None


def _next_path() -> str | None:
    return _safe_next(request.values.get("next"))


@bp.errorhandler(CSRFError)
def _csrf_error(error: CSRFError):
    detail = ("The form was not accepted: its security token is missing or has expired. "
              "Reload the page and try again.")
    if request.endpoint in DATA_ENDPOINTS:
        return handle_project_error(BadRequest(f"CSRF check failed: {error.description}"))
    return render_template("ui/error.html", status=400, title="Form not accepted", detail=detail), 400


@bp.errorhandler(SorterBotError)
def _project_error(error: SorterBotError):
    if request.endpoint in DATA_ENDPOINTS or isinstance(error, Unauthorized):
        return handle_project_error(error)
    return render_template("ui/error.html", status=error.status, title=error.title, detail=error.detail), error.status


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    if request.endpoint in DATA_ENDPOINTS:
        return handle_http_exception(error)
    status = int(error.code or 500)
    return render_template("ui/error.html", status=status, title=error.name, detail=error.description), status


@bp.context_processor
def _console_context() -> dict:
    return {"service_version": service_version(), "console_css": console_css(),
            "token_required": bool(state().settings.api_token)}


@bp.app_template_filter("console_utc")
def utc_text(value: datetime) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM:SS UTC`` (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@lru_cache(maxsize=1)
def console_css() -> Markup:
    """The console's style sheet, inlined in every page (the login page is served before
    the browser may fetch ``/ui/static``)."""
    return Markup((Path(bp.static_folder) / "console.css").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ login
@bp.route("/login", methods=["GET", "POST"])
def login():
    """GET: the login form (the state when signed in). POST: keep the typed token in the cookie."""
    token_required = bool(state().settings.api_token)
    if request.method == "GET":
        return render_template("ui/login.html", error=None, next=_next_path(), token_required=token_required,
                               signed_in=token_required)
    target = _next_path() or url_for("ui.home")
    response = redirect(target, code=303)
    if token_required:  # the bearer check accepted the typed token before this view ran
        response.set_cookie(TOKEN_COOKIE, request.form.get(TOKEN_FIELD, "").strip(), path=URL_PREFIX,
                            httponly=True, samesite="Strict", secure=request.is_secure)
        flash("Signed in.")
    return response


@bp.post("/logout")
def logout():
    """Forget the token cookie."""
    response = redirect(url_for("ui.login"), code=303)
    response.delete_cookie(TOKEN_COOKIE, path=URL_PREFIX)
    return response


# ------------------------------------------------------------------ pages
@bp.get("/")
def home():
    """Links to the pages, with the arms and the newest sessions."""
    repository = state().service.repository
    return render_template("ui/home.html", arms=repository.list_arms(),
                           recent=repository.session_page(limit=5)["sessions"])


@bp.get("/try")
def try_photo():
    """Upload a frame, see its detections (drawn client-side), nothing stored."""
    return render_template("ui/try.html", score_threshold=float(state().settings.detector_score_threshold))


@bp.post("/predict")
def predict():
    """``POST /predict`` for the try page (multipart field ``file``): the same view, the same
    JSON, through the same ingest line (:mod:`sorterbot_cloud.api.admission`) when there is one."""
    control = current_app.extensions.get(admission.EXTENSION_KEY)
    if control is None:
        return v1.predict()
    refusal = control.acquire()
    if refusal is not None:
        return admission.refusal_response(refusal, control)
    start_s = time.perf_counter()
    try:
        return v1.predict()
    finally:
        control.release(time.perf_counter() - start_s)


@bp.get("/arms")
def arms():
    """Arms and their sessions, newest first, :data:`PAGE_SIZE` a page."""
    arm_id = request.args.get("arm") or None
    if arm_id is not None:
        arm_id = validate_id("arm", arm_id)
    page = _page_number(request.args.get("page", "1"))
    repository = state().service.repository
    listing = repository.session_page(arm_id, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    n_pages = max(1, math.ceil(listing["total"] / PAGE_SIZE))
    if page > n_pages:
        raise BadRequest(f"page {page} does not exist: there are {n_pages} pages")
    return render_template("ui/arms.html", arms=repository.list_arms(), arm_id=arm_id, page=page, n_pages=n_pages,
                           total=listing["total"], sessions=listing["sessions"], page_size=PAGE_SIZE)


def _page_number(value: str) -> int:
    """A 1-based page number from the query.

    Raises
    ------
    BadRequest
        If ``value`` is not a whole number of at least 1.
    """
    if not value.isdigit() or int(value) < 1:
        raise BadRequest(f"page must be a whole number of at least 1, got {value!r}")
    return int(value)


@bp.get(SESSION)
def session_page(arm_id: str, session_id: str):
    """One session: frames with boxes (polled), the table plot, the commands, the compute form."""
    arm_id = validate_id("arm_id", arm_id)
    session_id = validate_id("session_id", session_id)
    repository = state().service.repository
    frames = session_frames_payload(arm_id, session_id)  # UnknownSession (404) first
    record = repository.latest_commands(arm_id, session_id)
    result = record["result"] if record is not None and isinstance(record["result"], dict) else None
    objects = list(result.get("objects") or []) if result else []
    default_constants = ArmConstants.reference(arm_id=arm_id, calibrated=False).to_mapping()
    return render_template(
        "ui/session.html", arm_id=arm_id, session_id=session_id, frames=frames, record=record, result=result,
        objects=objects, commands=list(result.get("commands") or []) if result else [],
        plot=table_svg(result) if result else None, groups=_legend(result) if result else [],
        container_groups=container_groups(result) if result else {}, group_colour=group_colour,
        constants_json=json.dumps(record["constants"] if record else default_constants, indent=2),
        poll_interval_ms=POLL_INTERVAL_MS,
    )


def _legend(result: dict) -> list[dict]:
    """One entry per item group: ``cluster_id``, ``colour``, ``n_items``, ``container_id``."""
    by_group: dict[int, dict] = {}
    for obj in result.get("objects") or []:
        if obj.get("class") == "item" and obj.get("cluster_id") is not None:
            entry = by_group.setdefault(int(obj["cluster_id"]), {"cluster_id": int(obj["cluster_id"]), "n_items": 0,
                                                                 "colour": group_colour(obj["cluster_id"]),
                                                                 "container_id": None})
            entry["n_items"] += 1
    for container_id, group in container_groups(result).items():
        if group in by_group:
            by_group[group]["container_id"] = container_id
    return [by_group[k] for k in sorted(by_group)]


@bp.get(SESSION + "/frames.json")
def session_frames(arm_id: str, session_id: str):
    """The session's frames with their detections (what the session page polls)."""
    arm_id = validate_id("arm_id", arm_id)
    session_id = validate_id("session_id", session_id)
    return jsonify(session_frames_payload(arm_id, session_id))


def session_frames_payload(arm_id: str, session_id: str) -> dict:
    """Frames of a stored session with their boxes, in pulse-width order.

    Returns
    -------
    dict
        ``frames``: list of ``image_name``, ``pw0`` (µs), ``width_px``, ``height_px``,
        ``updated_at`` (ISO 8601), ``image_url``, ``detections`` (``class``,
        ``box_xyxy`` pixels, ``score``); ``n_frames``, ``n_detections``; ``version``, a
        string that changes whenever a frame is stored or replaced.

    Raises
    ------
    UnknownSession
        If the session has no stored frame.
    """
    repository = state().service.repository
    frames = repository.session_frames(arm_id, session_id)
    by_name: dict[str, list[dict]] = {f["image_name"]: [] for f in frames}
    for d in repository.load_session(arm_id, session_id):
        by_name.setdefault(d.image_name, []).append({
            "class": "container" if d.class_id == 1 else "item",
            "box_xyxy": [round(float(v), 2) for v in d.box_xyxy],
            "score": round(float(d.score), 4),
        })
    out = []
    for f in frames:
        out.append({
            "image_name": f["image_name"], "pw0": float(f["pw0"]), "width_px": int(f["width_px"]),
            "height_px": int(f["height_px"]), "updated_at": f["updated_at"].isoformat(),
            "image_url": url_for("ui.frame_image", arm_id=arm_id, session_id=session_id, image_name=f["image_name"]),
            "detections": by_name.get(f["image_name"], []),
        })
    n_detections = sum(len(f["detections"]) for f in out)
    latest = max((f["updated_at"] for f in out), default="")
    return {"frames": out, "n_frames": len(out), "n_detections": n_detections,
            "version": f"{len(out)}:{n_detections}:{latest}"}


@bp.get(SESSION + "/frames/<image_name>")
def frame_image(arm_id: str, session_id: str, image_name: str):
    """An archived frame, as it was posted."""
    key = DiskArchive.key_of(validate_id("arm_id", arm_id), validate_id("session_id", session_id),
                             validate_image_name(image_name))
    try:
        data = state().service.archive.get(key)
    except (FileNotFoundError, KeyError):
        raise UnknownSession(f"no archived frame {image_name!r} in session {session_id!r} of arm {arm_id!r}") from None
    mimetype = "image/png" if image_name.lower().endswith(".png") else "image/jpeg"
    response = Response(data, mimetype=mimetype)
    # a re-posted frame replaces the image: the session page asks with ?v=<updated_at>, and
    # such a versioned URL may be kept; any other is checked again
    response.headers["Cache-Control"] = "private, max-age=3600" if request.args.get("v") else "private, no-cache"
    return response


@bp.post(SESSION + "/commands")
def compute_commands(arm_id: str, session_id: str):
    """Compute the session's commands (the trigger's service call) with the latest stored arm
    constants, or those of the form when none are stored."""
    arm_id = validate_id("arm_id", arm_id)
    session_id = validate_id("session_id", session_id)
    service = state().service
    record = service.repository.latest_commands(arm_id, session_id)
    if record is not None:
        constants = record["constants"]
    else:
        constants = _constants_of_form(request.form.get("constants", ""))
        check_body_arm_id(arm_id, ArmConstants.from_mapping(constants))
    result = service.commands_for_session(arm_id, session_id, constants)
    reason = f" ({result['reason']})" if result.get("reason") else ""
    flash(f"Computed {len(result['commands'])} commands for {len(result['objects'])} objects{reason}.")
    return redirect(url_for("ui.session_page", arm_id=arm_id, session_id=session_id) + "#commands-heading",
                    code=303)


def _constants_of_form(text: str) -> Any:
    """The arm constants typed in the session page's form.

    Raises
    ------
    BadRequest
        If the text is empty or not a JSON object.
    """
    if not text.strip():
        raise BadRequest("the arm constants are empty: enter a JSON object of arm constants")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"the arm constants are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("the arm constants must be a JSON object")
    return value


@bp.get(SESSION + "/overview.png")
def overview_png(arm_id: str, session_id: str):
    """The overview PNG of the latest result (the ``GET /v1/.../overview.png`` view), as a download."""
    response = v1.get_overview(arm_id, session_id)
    response.headers["Content-Disposition"] = f'attachment; filename="{arm_id}_{session_id}_overview.png"'
    return response


@bp.get(SESSION + "/result.json")
def result_json(arm_id: str, session_id: str):
    """The latest result (the ``GET /v1/.../commands`` view), as a download."""
    response = v1.get_commands(arm_id, session_id)
    response.headers["Content-Disposition"] = f'attachment; filename="{arm_id}_{session_id}_result.json"'
    return response


@bp.get("/health")
def health():
    """Models, database, archive and upload queue, version."""
    st = state()
    settings = st.settings
    ops_state = current_app.extensions.get("sorterbot_ops")
    aws = getattr(ops_state, "aws", None)
    uploads = getattr(ops_state, "uploads", None)
    checks = readiness_checks(st)
    models = [
        model_record("detector", st.service.detector, model_file(st.service.detector, settings.detector_weights)),
        model_record("embedder", st.service.embedder, model_file(st.service.embedder, settings.embedder_weights)),
    ]
    return render_template(
        "ui/health.html", models=models, database_ok=checks["database"], mode=settings.mode,
        bucket=getattr(aws, "bucket", None) or settings.s3_bucket, archive=type(st.service.archive).__name__,
        image_dir=settings.image_dir, queue_length=None if uploads is None else int(uploads.pending),
        ingest=current_app.extensions.get(admission.EXTENSION_KEY),
        version=service_version(), token_required=bool(settings.api_token),
    )


def model_file(model: Any, configured: Path | str) -> Path:
    """The file a loaded model runs from.

    An ONNX Runtime model's ``graph_path``; else the weights named by its ``source``
    (``"<how>:<path>"``, as :class:`sorterbot_cloud.embedding.embedder.Embedder` keeps it) when that file
    exists; else the configured weights file.
    """
    graph_path = getattr(model, "graph_path", None)
    if graph_path:
        return Path(graph_path)
    _, _, path = str(getattr(model, "source", "") or "").partition(":")
    if path and Path(path).is_file():
        return Path(path)
    return Path(configured)


def model_record(stage: str, model: Any, path: Path | str) -> dict:
    """What the health page says of one model.

    Returns
    -------
    dict
        ``stage``, ``name`` (the loaded object's class), ``file`` (str), ``size_bytes``
        and ``sha256`` (None when the file does not exist).
    """
    path = Path(path)
    size_bytes, digest = _file_digest(str(path.resolve()), *_stat_key(path))
    return {"stage": stage, "name": type(model).__name__ if model is not None else None, "file": str(path),
            "size_bytes": size_bytes, "sha256": digest}


def _stat_key(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=16)
def _file_digest(path: str, size_bytes: int, mtime_ns: int) -> tuple[int | None, str | None]:
    """``(size, sha256 hex)`` of a file, cached by path, size and modification time."""
    if size_bytes < 0:
        return None, None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return size_bytes, digest.hexdigest()


@lru_cache(maxsize=1)
def service_version() -> str:
    """The installed ``sorterbot-cloud`` distribution's version (``"unknown"`` when not installed)."""
    try:
        return metadata.version("sorterbot-cloud")
    except metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["GROUP_COLOURS", "PAGE_SIZE", "session_frames_payload", "model_record", "service_version"]
