"""The original SorterBot arm client's routes (DESIGN.md, Wire protocol).

- ``POST /process_image?arm_id=A&session_id=S&image_name=1200.jpg`` with the raw frame as
  body: answers the frame's detections.
- ``POST /get_commands_of_session?session_id=S[&arm_id=A]`` with the arm constants as
  JSON body: answers ``[[[pick_pw0, pick_pw1], [place_pw0, place_pw1]], ...]``.
- ``GET /arm_checkin``: the HTTP-era client's check that the service is up, before every
  session: answers ``{"arm_checkin": 1}`` (0 when the service is not ready).

Like every route but ``/healthz``, these need the bearer token when ``API_TOKEN`` is set
(:mod:`sorterbot_cloud.ops.auth`).
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from sorterbot_cloud.api.health import readiness_checks
from sorterbot_cloud.api.state import frame_bytes, read_json_body, state
from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.errors import BadRequest, UnknownSession
from sorterbot_cloud.ids import check_body_arm_id, validate_id, validate_image_name

bp = Blueprint("compat", __name__)


@bp.get("/arm_checkin")
def arm_checkin():
    """The HTTP-era client's check before every session (2020 ``sorterbot_raspberry``).

    The client reads ``["arm_checkin"]`` from the JSON answer and reports it to the
    control panel as ``cloud_connect_success``, 0 meaning the cloud is down (the original
    service answered ``{"arm_checkin": 1}``). So the answer is always 200 JSON: 1 when
    the service is ready (the checks of ``/readyz``), else 0 and the failed checks; a
    problem body would have no ``arm_checkin`` and stop the client.
    """
    checks = readiness_checks(state())
    if all(checks.values()):
        return jsonify({"arm_checkin": 1})
    return jsonify({"arm_checkin": 0, "not_ready": sorted(name for name, ok in checks.items() if not ok)})


@bp.post("/process_image")
def process_image():
    """Ingest one frame of a session (idempotent per arm, session and image name)."""
    arm_id = validate_id("arm_id", request.args.get("arm_id"))
    session_id = validate_id("session_id", request.args.get("session_id"))
    image_name = validate_image_name(request.args.get("image_name"))
    data = frame_bytes(arm_id, session_id, image_name)
    return jsonify(state().service.process_frame(arm_id, session_id, image_name, data))


def resolve_arm_id(session_id: str, query_arm_id: str | None, constants: ArmConstants) -> str:
    """The arm of a trigger: the query's ``arm_id``, else the body's, else the session's only arm.

    Parameters
    ----------
    session_id : str
    query_arm_id : str or None
        The query's ``arm_id`` (None or empty when not given).
    constants : ArmConstants
        The validated body (its ``arm_id`` follows the query's rule, or is None).

    Raises
    ------
    BadRequest
        If an id is malformed, the query and the body name different arms, or several
        arms have a session of that id.
    UnknownSession
        If no arm has a session of that id.
    """
    if query_arm_id not in (None, ""):
        arm_id = validate_id("arm_id", query_arm_id)
        check_body_arm_id(arm_id, constants)
        return arm_id
    if constants.arm_id is not None:
        return constants.arm_id
    arm_ids = sorted(state().service.repository.arm_ids_of_session(session_id))
    if not arm_ids:
        raise UnknownSession(f"no frame is stored for session {session_id!r}")
    if len(arm_ids) > 1:
        raise BadRequest(
            f"session {session_id!r} exists for several arms ({', '.join(arm_ids)}): pass arm_id in the query"
        )
    return arm_ids[0]


@bp.post("/get_commands_of_session")
def get_commands_of_session():
    """Compute the session's commands and answer them in the original client's format."""
    session_id = validate_id("session_id", request.args.get("session_id"))
    body = read_json_body()
    constants = ArmConstants.from_mapping(body)  # reject malformed constants before any lookup
    arm_id = resolve_arm_id(session_id, request.args.get("arm_id"), constants)
    result = state().service.commands_for_session(arm_id, session_id, body)
    return jsonify(result["wire"])
