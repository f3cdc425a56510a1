"""Liveness, readiness and the OpenAPI document.

- ``GET /healthz``: the process answers (no dependency checked).
- ``GET /readyz``: the database answers ``SELECT 1`` and the models are loaded; 503
  problem details otherwise, so a load balancer stops routing to this replica.
- ``GET /openapi.json``: the hand-written OpenAPI 3.1 document (``openapi.json`` next
  to this module).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, jsonify

from sorterbot_cloud.api.state import state
from sorterbot_cloud.errors import ServiceUnavailable

bp = Blueprint("health", __name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.json")


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    """The OpenAPI 3.1 document describing every route."""
    return json.loads(OPENAPI_PATH.read_text())


@bp.get("/healthz")
def healthz():
    """Liveness: the process is up."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Readiness: database reachable and models loaded."""
    checks = readiness_checks(state())
    if not all(checks.values()):
        failed = ", ".join(k for k, ok in checks.items() if not ok)
        raise ServiceUnavailable(f"not ready: {failed} not available")
    return jsonify({"status": "ready", "checks": checks})


def readiness_checks(st) -> dict[str, bool]:
    """What ``/readyz`` checks: ``{"database": ..., "detector": ..., "embedder": ...}``,
    True for each dependency that is available."""
    return {
        "database": _database_ok(st),
        "detector": st.service.detector is not None,
        "embedder": st.service.embedder is not None,
    }


def _database_ok(st) -> bool:
    if st.ping is None:
        return True
    try:
        return bool(st.ping())
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document."""
    return jsonify(openapi_document())
