"""Command-line front of the service: ``serve``, ``replay``, ``demo``, ``overview``.

- ``sorterbot-cloud serve``: the Flask development server. In production run gunicorn
  instead (models load once per worker process, after the fork)::

      gunicorn --config python:sorterbot_cloud.ops.gunicorn_conf --workers 1 --threads 4 \\
          --bind 0.0.0.0:5000 'sorterbot_cloud.api:create_app()'

  ``serve --debug`` runs Werkzeug's interactive debugger (loopback only unless ``--host``
  is given).

- ``sorterbot-cloud replay DIR --url URL``: post a recorded or simulated session the way
  the arm does (every ``<pw>.jpg`` to ``/process_image``, then the trigger to
  ``/get_commands_of_session`` with the arm constants) and print the commands.
- ``sorterbot-cloud demo --out DIR``: simulate a session (fixed seed), start the service
  with the embedded database on a free port, replay the session over real HTTP, print the
  commands, their score against the ground truth and the overview path.
- ``sorterbot-cloud overview --arm-id A --session-id S``: write a session's overview PNG.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click

from sorterbot_cloud.structures import IMAGE_NAME_PATTERN, pulse_width_of_image_name

logger = logging.getLogger(__name__)

#: Seed of the demo session (a fixed scene: 6 items of 3 held-out types, 3 containers).
DEMO_SEED = 20200425
#: Keys of the original ``arm_config.yaml`` that are not arm constants (the original
#: client sends the whole file as the trigger body; the service ignores them).
CAMERA_ONLY_KEYS = ("camera", "zero_pw", "r_min_mm", "r_max_mm")


# --------------------------------------------------------------------------- helpers
def session_frames(session_dir: Path) -> list[Path]:
    """The ``<pw>.jpg`` / ``.png`` frames of a session folder, by pulse width.

    Raises
    ------
    click.ClickException
        If the folder holds no frame.
    """
    frames = [p for p in Path(session_dir).iterdir() if p.is_file() and IMAGE_NAME_PATTERN.fullmatch(p.name)]
    if not frames:
        raise click.ClickException(f"{session_dir} holds no '<pulse width>.jpg' frame")
    return sorted(frames, key=lambda p: (pulse_width_of_image_name(p.name), p.name))


def load_constants(session_dir: Path, arm_config: Path | None, legacy: bool) -> dict:
    """Arm constants for a trigger: an ``arm_config.yaml``, else the session's ground truth.

    Parameters
    ----------
    legacy : bool
        Drop the calibrated camera block, so the service uses the original formulas.

    Raises
    ------
    click.ClickException
        If neither source exists.
    """
    import yaml

    if arm_config is not None:
        constants = yaml.safe_load(Path(arm_config).read_text()) or {}
    else:
        gt_path = Path(session_dir) / "ground_truth.json"
        if not gt_path.exists():
            raise click.ClickException(f"no --arm-config given and {gt_path} does not exist")
        constants = json.loads(gt_path.read_text())["arm_constants"]
    if not isinstance(constants, dict):
        raise click.ClickException("arm constants must be a mapping")
    if legacy:
        constants = {k: v for k, v in constants.items() if k not in CAMERA_ONLY_KEYS}
    return constants


def replay_session(
    session_dir: Path,
    url: str,
    *,
    arm_id: str | None = None,
    session_id: str | None = None,
    constants: dict | None = None,
    token: str | None = None,
    rich: bool = True,
    timeout_s: float = 120.0,
) -> dict:
    """Post a session folder like the arm, then trigger it.

    Frames go one by one to ``POST /process_image?arm_id&session_id&image_name`` as
    ``image/jpeg`` (``image/png``) bodies; the trigger goes to
    ``POST /get_commands_of_session?session_id=S`` with the constants (and ``arm_id``)
    in the JSON body, as the original client sends it.

    Returns
    -------
    dict
        ``arm_id``, ``session_id``, ``ingest`` (one response per frame), ``wire`` (the
        compat answer) and, when ``rich``, ``result`` (``/v1/.../commands``).

    Raises
    ------
    click.ClickException
        On a non-2xx answer (its problem detail is shown).
    """
    import requests

    session_dir = Path(session_dir)
    gt_path = session_dir / "ground_truth.json"
    gt = json.loads(gt_path.read_text()) if gt_path.exists() else {}
    arm_id = arm_id or gt.get("arm_id") or (constants or {}).get("arm_id") or "ARM001"
    session_id = session_id or gt.get("session_id") or session_dir.name
    constants = dict(constants if constants is not None else load_constants(session_dir, None, legacy=False))
    constants["arm_id"] = arm_id
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out: dict[str, Any] = {"arm_id": arm_id, "session_id": session_id, "ingest": []}
    with requests.Session() as http:
        http.headers.update(headers)
        for path in session_frames(session_dir):
            content_type = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
            response = http.post(
                f"{base}/process_image",
                params={"arm_id": arm_id, "session_id": session_id, "image_name": path.name},
                data=path.read_bytes(),
                headers={"Content-Type": content_type},
                timeout=timeout_s,
            )
            out["ingest"].append(_check(response, f"POST /process_image {path.name}"))
        response = http.post(
            f"{base}/get_commands_of_session", params={"session_id": session_id}, json=constants, timeout=timeout_s
        )
        out["wire"] = _check(response, "POST /get_commands_of_session")
        if rich:
            response = http.get(f"{base}/v1/arms/{arm_id}/sessions/{session_id}/commands", timeout=timeout_s)
            out["result"] = _check(response, "GET /v1/.../commands")
    return out


def _check(response, what: str):
    if response.status_code >= 300:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:300]
        raise click.ClickException(f"{what} answered {response.status_code}: {detail}")
    return response.json()


def make_dev_server(host: str, port: int, app):
    """The threaded Werkzeug server of ``serve`` and ``demo`` for the WSGI app ``app``.

    Requests the server refuses while parsing them (a request line or header line over
    65,536 bytes, more than 100 header fields) are answered with JSON problem details
    (:class:`~sorterbot_cloud.ops.server_errors.ProblemRequestHandler`), like gunicorn's
    in production.
    """
    from werkzeug.serving import make_server

    from sorterbot_cloud.ops.server_errors import ProblemRequestHandler

    return make_server(host, port, app, threaded=True, request_handler=ProblemRequestHandler)


@contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` on a background thread (threaded Werkzeug server); yields its base URL."""
    server = make_dev_server(host, port, app)
    thread = threading.Thread(target=server.serve_forever, name="sorterbot-demo-server", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


#: How long ``serve`` waits, after SIGTERM or SIGINT, for the requests in flight to
#: finish before it stops the database anyway (seconds).
SHUTDOWN_GRACE_S = 30.0


class _InFlight:
    """WSGI middleware that counts the requests in flight (their bodies sent included).

    Parameters
    ----------
    app : WSGI application
    """

    def __init__(self, app) -> None:
        self.app = app
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self, environ, start_response):
        with self._cond:
            self.count += 1
        try:
            result = self.app(environ, start_response)
            try:
                yield from result
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            with self._cond:
                self.count -= 1
                self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; return False if ``timeout_s`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self.count == 0, timeout=timeout_s)


def close_app(app) -> None:
    """Close what :func:`sorterbot_cloud.api.create_app` opened: the database pool and
    other resources, then this process's claim on the embedded PostgreSQL (the server
    stops when no other process uses it)."""
    st = app.extensions.get("sorterbot")
    if st is None:
        return
    embedded = getattr(st.database, "embedded", None)
    st.close()
    if embedded is not None:
        embedded.release()
        logger.info("embedded PostgreSQL released", extra={"pg_data_dir": str(embedded.pg_data_dir)})


def serve_until_signalled(app, host: str, port: int, *, grace_s: float = SHUTDOWN_GRACE_S, wsgi_app=None,
                          banner: str = "development server; use gunicorn in production") -> None:
    """Serve ``app`` (threaded Werkzeug server) until SIGTERM or SIGINT, then shut down cleanly.

    On the signal the server stops accepting connections, the requests in flight get up
    to ``grace_s`` seconds to finish, and :func:`close_app` closes the database pool and
    releases the embedded PostgreSQL, which a kill at the default SIGTERM action left
    running. Must run on the main thread (signal handlers).

    Parameters
    ----------
    app : Flask
    host : str
    port : int
        0 picks a free port.
    grace_s : float
        Seconds to wait for requests in flight.
    wsgi_app : WSGI application, optional
        What to serve instead of ``app`` (``app`` wrapped, e.g. by :func:`debug_application`);
        ``app`` is still the one closed.
    banner : str
        Said after the address when the server starts.
    """
    counted = _InFlight(wsgi_app if wsgi_app is not None else app)
    server = make_dev_server(host, port, counted)
    stopping = threading.Event()

    def on_signal(signum, _frame) -> None:
        if stopping.is_set():
            return
        stopping.set()
        logger.info("%s received: stopping the server", signal.Signals(signum).name)
        # shutdown() waits for serve_forever() to return, which runs on this (main) thread
        threading.Thread(target=server.shutdown, name="sorterbot-shutdown", daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    click.echo(f"SorterBot Cloud listening on http://{host}:{server.server_port} ({banner})")
    try:
        server.serve_forever()
    finally:
        server.server_close()  # no new connections
        if not counted.wait_idle(grace_s):
            logger.warning("%d requests still in flight after %g s; stopping anyway", counted.count, grace_s)
        close_app(app)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("SorterBot Cloud stopped")


def debug_application(app, host: str | None = None):
    """``app`` under Werkzeug's interactive debugger (``serve --debug``).

    The app's JSON handler of unexpected errors (:mod:`sorterbot_cloud.api.errors`) would
    answer them as an opaque 500 before the debugger saw them: here it lets them propagate
    (``app.debug`` is set), so the debugger shows the traceback and its console, behind
    Werkzeug's PIN. Werkzeug's HTTP errors (404, 405, 413) and the project's errors keep
    their problem-detail answers.

    Parameters
    ----------
    app : flask.Flask
    host : str, optional
        An address given with ``--host``: the debugger also answers requests naming it in
        their ``Host`` header (Werkzeug's own list holds only ``127.0.0.1`` and
        ``localhost``).

    Returns
    -------
    werkzeug.debug.DebuggedApplication
        With ``evalex=True`` (the in-browser console) and the PIN.
    """
    from werkzeug.debug import DebuggedApplication
    from werkzeug.exceptions import HTTPException

    from sorterbot_cloud.api.errors import handle_http_exception

    def reraise_unexpected(error: Exception):
        if isinstance(error, HTTPException):
            return handle_http_exception(error)
        raise error

    app.debug = True
    app.register_error_handler(Exception, reraise_unexpected)
    debugged = DebuggedApplication(app, evalex=True, pin_security=True)
    if host is not None:
        debugged.trusted_hosts.append(host)
    return debugged


#: Addresses that only this machine can reach.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def format_commands(wire: list) -> str:
    """One line per command: ``pick (pw0, pw1) -> place (pw0, pw1)``."""
    if not wire:
        return "  (no commands)"
    return "\n".join(
        f"  {i + 1:2d}. pick ({p[0]:7.1f}, {p[1]:7.1f}) -> place ({q[0]:7.1f}, {q[1]:7.1f})"
        for i, (p, q) in enumerate(wire)
    )


def _settings(config: str | None, **overrides):
    from sorterbot_cloud.config import Settings

    return Settings.load(config_file=config, **{k: v for k, v in overrides.items() if v is not None})


def _build_app(settings):
    from sorterbot_cloud.api import create_app

    try:
        return create_app(settings)
    except FileNotFoundError as exc:
        raise click.ClickException(
            f"model weights missing: {exc}. Train or fetch them first (see weights/README.md); "
            "nothing is downloaded at run time."
        ) from exc


# --------------------------------------------------------------------------- commands
@click.command()
@click.option("--host", default=None, help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--config", type=click.Path(dir_okay=False), help="YAML config file (default: config.yaml).")
@click.option("--debug", is_flag=True,
              help="Werkzeug's interactive debugger on unexpected errors (reloader off). It runs code "
                   "for whoever has its PIN: loopback only unless --host is given.")
def serve(host: str | None, port: int, config: str | None, debug: bool) -> None:
    """Run the service with Flask's development server.

    SIGTERM or SIGINT stops it cleanly: no new connections, requests in flight finish,
    the embedded PostgreSQL stops. For production use gunicorn: gunicorn --config
    python:sorterbot_cloud.ops.gunicorn_conf --workers 1 --threads 4 --bind 0.0.0.0:5000
    'sorterbot_cloud.api:create_app()'
    """
    app = _build_app(_settings(config))
    if not debug:
        serve_until_signalled(app, host or "127.0.0.1", port)
        return
    explicit_host = host is not None
    host = host or "127.0.0.1"
    if host in LOOPBACK_HOSTS:
        click.echo(f"WARNING: debug mode: Werkzeug's interactive debugger is on, on {host} only"
                   f"{'' if explicit_host else ' (give --host to listen elsewhere)'}. Never use it in production.",
                   err=True)
    else:
        click.echo(f"WARNING: debug mode on {host}: whoever can reach this address and has the debugger's PIN "
                   "can run code on this machine. Never use it in production.", err=True)
    debugged = debug_application(app, host if explicit_host else None)
    # Werkzeug prints the PIN only under its reloader, which serve does not run
    click.echo(f"Debugger PIN (unlocks the in-browser console): {debugged.pin}", err=True)
    serve_until_signalled(app, host, port, wsgi_app=debugged,
                          banner="development server with Werkzeug's interactive debugger")


@click.command()
@click.argument("session_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--url", required=True, help="Base URL of the service, e.g. http://127.0.0.1:5000")
@click.option("--arm-id", help="Default: ground_truth.json's, else ARM001.")
@click.option("--session-id", help="Default: ground_truth.json's, else the folder name.")
@click.option("--arm-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="arm_config.yaml to send as trigger body (default: ground_truth.json's arm_constants).")
@click.option("--legacy", is_flag=True, help="Drop the calibrated camera block (original formulas).")
@click.option("--token", envvar="API_TOKEN", help="Bearer token, when the service needs one.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the rich result here.")
def replay(session_dir, url, arm_id, session_id, arm_config, legacy, token, json_out) -> None:
    """Post a recorded or simulated session like the arm and print the commands."""
    constants = load_constants(session_dir, arm_config, legacy)
    out = replay_session(session_dir, url, arm_id=arm_id, session_id=session_id, constants=constants, token=token)
    n_det = sum(len(r["detections"]) for r in out["ingest"])
    click.echo(f"posted {len(out['ingest'])} frames ({n_det} detections) for arm {out['arm_id']}, session {out['session_id']}")
    click.echo(f"{len(out['wire'])} commands [[pick_pw0, pick_pw1], [place_pw0, place_pw1]]:")
    click.echo(format_commands(out["wire"]))
    if out.get("result", {}).get("reason"):
        click.echo(f"reason: {out['result']['reason']}")
    click.echo(json.dumps(out["wire"]))
    if json_out:
        json_out.write_text(json.dumps(out.get("result", out["wire"]), indent=1))


@click.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=DEMO_SEED, show_default=True, type=int)
@click.option("--heldout/--known-types", default=False, show_default=True,
              help="Item types and table textures held out of training (harder), or the kinds the shipped models know.")
@click.option("--legacy", is_flag=True, help="Trigger with the original (legacy) constants instead of the calibrated camera.")
def demo(out_dir: Path, seed: int, heldout: bool, legacy: bool) -> None:
    """Simulate a session, serve it with the embedded database, replay it over HTTP, score it."""
    from sorterbot_cloud import evaluation
    from sorterbot_cloud.sim.sessions import simulate_isolated

    out_dir = Path(out_dir)
    session_dir = out_dir / "session"
    click.echo(f"1/4 simulating session (seed {seed}) into {session_dir} ...")
    # rendered in a child process: VTK in this process would crash torch's Triton import
    gt_path = simulate_isolated(session_dir, seed, n_items=6, n_item_types=3, n_containers=3, heldout=heldout,
                                session_id=f"demo_{seed}")
    ground_truth = json.loads(Path(gt_path).read_text())
    # the demo owns its own embedded database under out/, whatever PG_CONN says
    settings = _settings(None, data_dir=str((out_dir / "var").resolve()))
    if settings.pg_conn is not None:
        import dataclasses

        settings = dataclasses.replace(settings, pg_conn=None)
    click.echo(f"2/4 starting the service (embedded PostgreSQL under {settings.pg_data_dir}, models loaded once) ...")
    app = _build_app(settings)
    try:
        with running_server(app) as url:
            click.echo(f"3/4 replaying {len(session_frames(session_dir))} frames over HTTP to {url} ...")
            started = time.perf_counter()
            constants = load_constants(session_dir, None, legacy)
            out = replay_session(session_dir, url, constants=constants)
            elapsed_s = time.perf_counter() - started
            import requests

            response = requests.get(f"{url}/v1/arms/{out['arm_id']}/sessions/{out['session_id']}/overview.png", timeout=120)
            overview_path = out_dir / "overview.png"
            overview_path.write_bytes(_check_png(response))
    finally:
        app.extensions["sorterbot"].close()
    result = out["result"]
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    score = evaluation.score_session(ground_truth, result)
    ingest_ms = sorted(r["timings_ms"]["total"] for r in out["ingest"])
    click.echo(f"4/4 done in {elapsed_s:.1f} s (ingest median {ingest_ms[len(ingest_ms) // 2]:.0f} ms/frame, "
               f"trigger {result['timings_ms']['total']:.0f} ms)\n")
    click.echo(f"commands ({len(out['wire'])}, mode {result['mode']}) [[pick_pw0, pick_pw1], [place_pw0, place_pw1]]:")
    click.echo(format_commands(out["wire"]))
    if result.get("reason"):
        click.echo(f"reason: {result['reason']}")
    click.echo("")
    click.echo("score against ground truth:")
    click.echo(f"  objects found / true : items {score.n_found['item']}/{score.n_true['item']}, "
               f"containers {score.n_found['container']}/{score.n_true['container']}")
    if score.position_median_mm is not None:
        click.echo(f"  position error       : median {score.position_median_mm:.1f} mm, p95 {score.position_p95_mm:.1f} mm")
    click.echo(f"  grouping ARI         : {score.ari if score.ari is None else round(score.ari, 3)}")
    click.echo(f"  sorted correctly     : {'yes' if score.sorted_correctly else 'no: ' + '; '.join(score.problems)}")
    click.echo(f"\noverview: {overview_path}\nresult:   {out_dir / 'result.json'}")
    if not score.sorted_correctly:
        sys.exit(1)


def _check_png(response) -> bytes:
    if response.status_code != 200:
        raise click.ClickException(f"overview answered {response.status_code}: {response.text[:300]}")
    return response.content


@click.command()
@click.option("--arm-id", required=True)
@click.option("--session-id", required=True)
@click.option("--constants", "constants_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Arm constants (JSON or YAML) to recompute the commands; default: the latest stored result.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Default: <data_dir>/overviews/<arm_id>/<session_id>.png")
@click.option("--config", type=click.Path(dir_okay=False), help="YAML config file (default: config.yaml).")
def overview(arm_id: str, session_id: str, constants_path: Path | None, out_path: Path | None, config: str | None) -> None:
    """Write a session's overview PNG (frames, boxes coloured by group, legend of containers)."""
    import yaml

    from sorterbot_cloud.db import Database, Repository
    from sorterbot_cloud.errors import SorterBotError
    from sorterbot_cloud.overview import write_overview
    from sorterbot_cloud.service import Service, validate_id
    from sorterbot_cloud.storage import DiskArchive

    settings = _settings(config)
    try:
        arm_id, session_id = validate_id("arm_id", arm_id), validate_id("session_id", session_id)
        database = Database.from_settings(settings)
    except SorterBotError as exc:
        raise click.ClickException(exc.detail) from exc
    try:
        repository = Repository(database.pool)
        archive = DiskArchive.from_settings(settings)
        if constants_path is not None:
            service = Service(settings, detector=None, embedder=None, repository=repository, archive=archive)
            result = service.commands_for_session(arm_id, session_id, yaml.safe_load(constants_path.read_text()))
        else:
            record = repository.latest_commands(arm_id, session_id)
            if record is None:
                raise click.ClickException("no commands stored for this session: pass --constants to compute them")
            result = record["result"]
        out_path = out_path or settings.overview_dir / arm_id / f"{session_id}.png"
        write_overview(result, repository, archive, out_path)
    except SorterBotError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        database.close()
    click.echo(str(out_path))
