"""Validation of the request's identifiers: arm and session ids, frame names, the body's arm.

Shared by the HTTP routes, the WebSocket handler, the service and the trigger; every
rejection is a :class:`~sorterbot_cloud.errors.BadRequest` (400) saying what was wrong.
"""

from __future__ import annotations

from typing import Any

from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.structures import ID_PATTERN, IMAGE_NAME_PATTERN


def validate_id(name: str, value: Any) -> str:
    """Check an arm or session id against :data:`~sorterbot_cloud.structures.ID_PATTERN`.

    Parameters
    ----------
    name : str
        ``"arm_id"`` or ``"session_id"``, for the message.
    value : object
        The value received (an int from a JSON body is accepted and turned into a string).

    Returns
    -------
    str

    Raises
    ------
    BadRequest
        If the value is missing or is not 1 to 64 of ``[A-Za-z0-9_.-]``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or value == "":
        raise BadRequest(f"missing parameter {name!r}")
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise BadRequest(f"{name} must be 1 to 64 characters of letters, digits, '_', '-' and '.', got {value!r}")
    return value


def check_body_arm_id(arm_id: str, constants: ArmConstants) -> None:
    """Refuse a trigger whose body names another arm than its query or URL.

    Parameters
    ----------
    arm_id : str
        The arm of the request (query or URL), already validated.
    constants : ArmConstants
        The body's constants; their ``arm_id`` may be None (not given).

    Raises
    ------
    BadRequest
        If the body's ``arm_id`` is given and differs from ``arm_id``.
    """
    if constants.arm_id is not None and constants.arm_id != arm_id:
        raise BadRequest(
            f"the body's arm_id {constants.arm_id!r} is not the arm of the request ({arm_id!r}): "
            "send one arm_id, or the same in both"
        )


def validate_image_name(image_name: Any) -> str:
    """Check a frame name such as ``1200.jpg`` (no directories, so no path traversal).

    Raises
    ------
    BadRequest
        If the name is missing or is not ``<pulse width>.jpg|jpeg|png``.
    """
    if image_name is None or image_name == "":
        raise BadRequest("missing parameter 'image_name'")
    if not isinstance(image_name, str) or not IMAGE_NAME_PATTERN.fullmatch(image_name):
        raise BadRequest(
            f"image_name must be '<base servo pulse width>.jpg' (or .jpeg/.png), e.g. '1200.jpg', got {image_name!r}"
        )
    return image_name


__all__ = ["check_body_arm_id", "validate_id", "validate_image_name"]
