"""Versioned routes: resource-style ingest, rich commands, session overview, predict.

- ``PUT|POST /v1/arms/<arm_id>/sessions/<session_id>/frames/<image_name>``: ingest a frame
  (raw body), answers the detections and per-stage timings.
- ``POST /v1/arms/<arm_id>/sessions/<session_id>/commands``: arm constants in, the rich
  result out (objects with polar coordinates, detections behind each, group labels,
  commands, the wire list and timings).
- ``GET /v1/arms/<arm_id>/sessions/<session_id>/commands``: the latest stored result.
- ``POST /v1/arms/<arm_id>/sessions/<session_id>/overview.png``: arm constants in, the
  session overview PNG out (frames with boxes coloured by group, legend of containers);
  ``GET`` draws the latest stored result.
- ``POST /predict`` (and ``/v1/predict``): detections of one image, raw body or multipart
  field ``file``; nothing is stored.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from sorterbot_cloud.api.state import IMAGE_MEDIA_TYPES, frame_bytes, read_image_body, read_json_body, state
from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.errors import BadRequest, UnknownSession, UnsupportedMediaType
from sorterbot_cloud.ids import check_body_arm_id, validate_id, validate_image_name

bp = Blueprint("v1", __name__, url_prefix="/v1")
predict_bp = Blueprint("predict", __name__)

SESSION = "/arms/<arm_id>/sessions/<session_id>"


@bp.route(SESSION + "/frames/<image_name>", methods=["PUT", "POST"])
def put_frame(arm_id: str, session_id: str, image_name: str):
    """Ingest one frame (idempotent: the same name again replaces its detections)."""
    arm_id = validate_id("arm_id", arm_id)
    session_id = validate_id("session_id", session_id)
    image_name = validate_image_name(image_name)
    data = frame_bytes(arm_id, session_id, image_name)
    return jsonify(state().service.process_frame(arm_id, session_id, image_name, data))


@bp.post(SESSION + "/commands")
def post_commands(arm_id: str, session_id: str):
    """Compute the session's commands; answer the rich result."""
    body = _trigger_body(arm_id)
    return jsonify(state().service.commands_for_session(arm_id, session_id, body))


@bp.get(SESSION + "/commands")
def get_commands(arm_id: str, session_id: str):
    """The latest computed result of the session (as the last trigger answered it)."""
    return jsonify(_latest_result(arm_id, session_id))


@bp.post(SESSION + "/overview.png")
def post_overview(arm_id: str, session_id: str):
    """Compute the session's commands and answer its overview PNG."""
    body = _trigger_body(arm_id)
    result = state().service.commands_for_session(arm_id, session_id, body)
    return _overview_response(result)


def _trigger_body(arm_id: str):
    """The JSON body of a trigger, refused when its ``arm_id`` is not the URL's arm.

    Raises
    ------
    BadRequest
        If the URL's arm id is malformed, the body is not JSON, or the body names another arm.
    InvalidArmConstants
        If the body holds malformed arm constants.
    """
    arm_id = validate_id("arm_id", arm_id)
    body = read_json_body()
    check_body_arm_id(arm_id, ArmConstants.from_mapping(body))
    return body


@bp.get(SESSION + "/overview.png")
def get_overview(arm_id: str, session_id: str):
    """The overview PNG of the session's latest computed result."""
    return _overview_response(_latest_result(arm_id, session_id))


def _latest_result(arm_id: str, session_id: str) -> dict:
    arm_id = validate_id("arm_id", arm_id)
    session_id = validate_id("session_id", session_id)
    record = state().service.repository.latest_commands(arm_id, session_id)
    if record is None:
        raise UnknownSession(
            f"no commands were computed for arm_id={arm_id!r}, session_id={session_id!r}: "
            "POST the arm constants to this session's /commands first"
        )
    return record["result"]


def _overview_response(result: dict) -> Response:
    from sorterbot_cloud.overview import session_overview_png

    service = state().service
    png = session_overview_png(result, service.repository, service.archive)
    return Response(png, mimetype="image/png")


def _predict_bytes() -> bytes:
    """The image of a predict request: multipart field ``file`` or the raw body."""
    if (request.mimetype or "").lower() == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise BadRequest("multipart body has no field 'file': send it as curl -F file=@frame.jpg")
        upload_type = (upload.mimetype or "").lower()
        if upload_type and upload_type not in IMAGE_MEDIA_TYPES:
            raise UnsupportedMediaType(f"field 'file' has content type {upload_type!r}; expected a JPEG or PNG")
        return upload.read()
    return read_image_body()


@predict_bp.post("/predict")
@predict_bp.post("/v1/predict")
def predict():
    """Detections of one image; nothing is stored."""
    return jsonify(state().service.predict(_predict_bytes()))
