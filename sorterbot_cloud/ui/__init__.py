"""The operator console: a few server-rendered pages under ``/ui/``.

Pages (:mod:`.views`): try a photo (``/ui/try``), arms and sessions (``/ui/arms``), one
session (``/ui/arms/<arm_id>/sessions/<session_id>``) and health (``/ui/health``).
They are Jinja templates with a little plain JavaScript (``static/``); no build step.

Access control
--------------
The console is behind the API's own bearer-token check (:mod:`sorterbot_cloud.ops`,
:func:`sorterbot_cloud.ops.auth.check_bearer`) when ``Settings.api_token`` is set. A
browser cannot add an ``Authorization`` header to a page load, so the console carries
the token in a cookie (:data:`TOKEN_COOKIE`: ``HttpOnly``, ``SameSite=Strict``, path
``/ui``, ``Secure`` over HTTPS) set by the login form, and :func:`init_app` installs a
hook that, for console routes only, hands that cookie (or, on the login form's POST, the
typed token) to the ops check as ``Authorization: Bearer <token>``. The ops check then
decides exactly as for any API call; a refused page request is answered by the login
form (401) or sent to it (303), a refused JSON request keeps the 401 problem body.

Forms that change something, and the console's ``fetch`` calls, carry a CSRF token
(Flask-WTF's :class:`~flask_wtf.csrf.CSRFProtect`, checked on the console's routes only:
the API's routes are called by arms with a bearer header, not by browsers). Flask-WTF
keeps its secret in Flask's signed session cookie, also limited to ``/ui`` and
``SameSite=Strict``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Flask, request

from .blueprint import SESSION_COOKIE, TOKEN_COOKIE, TOKEN_FIELD, URL_PREFIX, bp, csrf

__all__ = ["bp", "csrf", "init_app", "TOKEN_COOKIE", "URL_PREFIX"]


def init_app(app: Flask, settings) -> None:
    """Add the console to ``app``: its blueprint, CSRF protection and cookie hand-over.

    Call it before :func:`sorterbot_cloud.ops.init_app`: its ``before_request`` hook must
    run before the ops token check, which it feeds.

    Parameters
    ----------
    app : flask.Flask
    settings : Settings
        ``api_token`` (when set, the console needs it) also keys the signed session
        cookie (``SECRET_KEY`` derived by HMAC-SHA256, so every worker and replica with
        the same token accepts the same forms). Without a token the key is random per
        process: a form is then accepted by the process that rendered it (one worker
        per process, as the documented gunicorn line runs).
    """
    if not app.config.get("SECRET_KEY"):
        token = settings.api_token
        app.config["SECRET_KEY"] = (
            hmac.new(token.encode("utf-8"), b"sorterbot-console-session", hashlib.sha256).hexdigest()
            if token else secrets.token_hex(32)
        )
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_PATH=URL_PREFIX,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        WTF_CSRF_CHECK_DEFAULT=False,  # checked in the console's own before_request (views)
    )
    csrf.init_app(app)
    app.before_request(_hand_console_token_to_auth)
    from . import views  # noqa: F401 - registers the routes on bp

    app.register_blueprint(bp)


def _hand_console_token_to_auth() -> None:
    """Give the console's credential to the bearer check as an ``Authorization`` header.

    Only for console routes, only when the request has no header of its own: the login
    form's typed token on its POST, else the token cookie.
    """
    if request.blueprint != bp.name or "Authorization" in request.headers:
        return
    if request.endpoint == "ui.login" and request.method == "POST":
        token = request.form.get(TOKEN_FIELD, "")
    else:
        token = request.cookies.get(TOKEN_COOKIE, "")
    token = token.strip()
    if token and token.isprintable():
        request.environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
