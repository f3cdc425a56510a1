"""gunicorn settings of the production server (``gunicorn --config python:sorterbot_cloud.ops.gunicorn_conf``).

The Docker image's command passes this module; options given on the command line
override it. Requests over the limits below are refused by gunicorn while it parses them,
before the app runs; :class:`~sorterbot_cloud.ops.server_errors.ProblemThreadWorker`
answers them with the service's JSON problem details (``application/problem+json``)
instead of gunicorn's HTML pages:

- request line (method, URL with its query, HTTP version) over
  :data:`limit_request_line` bytes: ``414 URI Too Long``;
- more than :data:`limit_request_fields` header fields, or one field (name, ``: ``
  and value) over :data:`limit_request_field_size` bytes:
  ``431 Request Header Fields Too Large``;
- a malformed request: ``400 Bad Request``.
"""

from __future__ import annotations

#: The threaded worker answering gunicorn's own errors as problem details.
worker_class = "sorterbot_cloud.ops.server_errors.ProblemThreadWorker"

#: Longest request line, in bytes (gunicorn's default, 4094). The service's longest URL,
#: ``/v1/arms/<64>/sessions/<64>/frames/<image name>`` with a query, is under 400.
limit_request_line = 4094
#: Most header fields in a request (gunicorn's default is 100). An arm client sends under
#: 10, a browser about 20, and a load balancer adds a few ``X-Forwarded-*`` and trace ids.
limit_request_fields = 64
#: Longest header field, in bytes (gunicorn's default, 8190): room for a bearer token, the
#: console's cookie and a load balancer's trace id.
limit_request_field_size = 8190
