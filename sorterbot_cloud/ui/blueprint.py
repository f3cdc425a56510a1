"""The console's blueprint, its CSRF protection and the names of its cookies and form fields."""

from __future__ import annotations

from flask import Blueprint
from flask_wtf.csrf import CSRFProtect

#: Cookie holding the bearer token of a signed-in operator.
TOKEN_COOKIE = "sorterbot_console_token"
#: Flask's session cookie (Flask-WTF's CSRF secret, flash messages), console paths only.
SESSION_COOKIE = "sorterbot_console_session"
#: Path prefix of every console route (and of the console's cookies).
URL_PREFIX = "/ui"
#: Form field of the login form that holds the typed token.
TOKEN_FIELD = "token"

bp = Blueprint("ui", __name__, url_prefix=URL_PREFIX, template_folder="templates", static_folder="static")
csrf = CSRFProtect()
