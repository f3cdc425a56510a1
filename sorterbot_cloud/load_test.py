"""``sorterbot-cloud bench load``: simulated arms posting sessions to the service at once.

Each of N simulated arms posts the frames of its session with the original client's HTTP
protocol (DESIGN.md, Wire protocol): ``POST /process_image?arm_id&session_id&image_name``
with the raw JPEG as body, at R frames per second (one frame at a time, as an arm does:
the next frame leaves at its scheduled time, or when the previous answer came if that was
later), then ``POST /get_commands_of_session?session_id=S`` with its arm constants. A frame
answered 503 is posted again after its ``Retry-After`` (at most ``max_retries`` times).
Measured: frames/s sustained, latency percentiles of ingest and trigger, answers by status.

Afterwards the same frames are posted once more, one by one, to reference sessions, and
every arm's stored frames, detections and commands are compared with its reference: a
frame lost, stored twice or stored with other detections fails the check.

The client is a thread per arm with a ``requests`` session each (``concurrent.futures``).
Locust was the other candidate; it is not used because importing it monkey-patches the
whole process with gevent (sockets, threads), which would also patch the psycopg pool of
the consistency check and, in the tests, the pytest process running the embedded
PostgreSQL fixtures; a few dozen arms at a few frames per second need no event loop.

Frames come from simulated sessions (``out/bench/sessions``, rendered once, in a child
process, when missing) or from ``--sessions-dir``; they are read into memory before the
measurement, so nothing is rendered or read from disk while it runs.

With ``--serve`` the command starts K replicas itself: gunicorn processes with the Docker
image's command line (``--workers W --threads T``, ``sorterbot_cloud.api:create_app()``)
on free loopback ports, on one database (``PG_CONN``, else an embedded PostgreSQL under a
temporary folder), each with its own ``DATA_DIR``. Requests go round-robin over the replicas,
as a load balancer spreads them.

Bounds: at most :data:`MAX_ARMS` arms, :data:`MAX_FRAMES_PER_ARM` frames each,
:data:`MAX_RATE_FPS` frames/s per arm, ``--duration-limit-s`` seconds per load phase;
loopback URLs only unless ``--allow-remote``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import click
import numpy as np

from sorterbot_cloud.config import PROJECT_ROOT

#: Most simulated arms, frames per arm and frames/s per arm one run accepts.
MAX_ARMS = 64
MAX_FRAMES_PER_ARM = 100
MAX_RATE_FPS = 20.0
MAX_REPLICAS = 8
#: The Docker image's application (Dockerfile, CMD).
PRODUCTION_APP = "sorterbot_cloud.api:create_app()"
#: Seeds of the simulated scenes (the evaluation seeds of ``evaluate-sessions``: cached).
SCENE_SEED_START = 1000
#: Tolerances of the consistency check: box corners (pixels), scores, pulse widths (µs).
BOX_ATOL_PX = 0.01
SCORE_ATOL = 1e-4
PW_ATOL_US = 0.01
#: p95 ingest latency under which a load counts as served (seconds).
P95_TARGET_S = 1.0
#: Longest wait for a started replica to answer ``/readyz`` (seconds; models load first).
READY_TIMEOUT_S = 300.0
#: Arm id of the sequential reference sessions.
REFERENCE_ARM_ID = "LOADREF"


# --------------------------------------------------------------------------- frames
@dataclasses.dataclass(frozen=True)
class Scene:
    """The frames of one session, in memory.

    Attributes
    ----------
    name : str
        The session folder's name.
    frames : list of (str, bytes, str)
        ``(image_name, encoded bytes, content type)`` by pulse width.
    constants : dict
        Arm constants of the trigger (the folder's ``ground_truth.json`` ``arm_constants``).
    """

    name: str
    frames: list[tuple[str, bytes, str]]
    constants: dict


def _simulated_folders(cache: str, n_scenes: int) -> list[str]:
    """Folders of the first ``n_scenes`` simulated scenes that lay out (run in a child process)."""
    from sorterbot_cloud.errors import BadRequest
    from sorterbot_cloud.sim.sessions import session_spec, simulated_session

    folders, seed = [], SCENE_SEED_START
    while len(folders) < n_scenes and seed < SCENE_SEED_START + 10 * n_scenes + 20:
        try:
            folders.append(str(simulated_session(Path(cache), seed, **session_spec(seed))))
        except BadRequest:
            pass
        seed += 1
    return folders


def scene_folders(sessions_dir: Path | None, n_scenes: int, cache: Path) -> list[Path]:
    """Session folders to post: those under ``sessions_dir`` (or that folder itself), else
    ``n_scenes`` simulated ones from ``cache``, rendered there first when missing.

    The simulator (VTK) runs in a spawned child process: this process stays free of it.

    Raises
    ------
    click.ClickException
        If no folder with frames is found.
    """
    from sorterbot_cloud.structures import IMAGE_NAME_PATTERN

    def has_frames(folder: Path) -> bool:
        return folder.is_dir() and any(IMAGE_NAME_PATTERN.fullmatch(p.name) for p in folder.iterdir())

    if sessions_dir is not None:
        sessions_dir = Path(sessions_dir)
        folders = [sessions_dir] if has_frames(sessions_dir) else sorted(p for p in sessions_dir.iterdir() if has_frames(p))
        folders = folders[:n_scenes]
    else:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            folders = [Path(p) for p in pool.submit(_simulated_folders, str(cache), int(n_scenes)).result()]
    if not folders:
        raise click.ClickException(f"no session folder with '<pulse width>.jpg' frames in {sessions_dir or cache}")
    return folders


def load_scene(folder: Path, frames_per_arm: int) -> Scene:
    """Read ``frames_per_arm`` frames of a session folder, evenly spaced over its pulse widths.

    Raises
    ------
    click.ClickException
        If the folder has fewer frames, or no arm constants.
    """
    from sorterbot_cloud.service_cli import load_constants, session_frames

    paths = session_frames(folder)
    if frames_per_arm > len(paths):
        raise click.ClickException(f"{folder} holds {len(paths)} frames, fewer than --frames-per-arm {frames_per_arm}")
    picks = np.unique(np.linspace(0, len(paths) - 1, frames_per_arm).round().astype(int))
    frames = [(paths[i].name, paths[i].read_bytes(), "image/png" if paths[i].suffix.lower() == ".png" else "image/jpeg")
              for i in picks]
    return Scene(Path(folder).name, frames, load_constants(folder, None, legacy=False))


# --------------------------------------------------------------------------- machine, urls
def machine_info() -> dict:
    """The machine the load test runs on: CPUs (count, usable, model), memory, load average."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": model,
        "memory_gib": mem_gib,
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def check_url(url: str, allow_remote: bool) -> str:
    """Validate a service URL; refuse a host that is not loopback unless ``allow_remote``.

    Returns
    -------
    str
        The URL without a trailing slash.

    Raises
    ------
    click.BadParameter
        On a malformed URL or a non-loopback host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{url!r} is not an http(s) URL", param_hint="--url")
    if not allow_remote:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80)}
        except socket.gaierror as exc:
            raise click.BadParameter(f"cannot resolve {parts.hostname!r}: {exc}", param_hint="--url") from exc
        remote = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
        if remote:
            raise click.BadParameter(
                f"{parts.hostname!r} is not a loopback address ({', '.join(remote)}); the load test only runs "
                "against this machine unless --allow-remote is given", param_hint="--url")
    return url.rstrip("/")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- replicas
class Replica:
    """One gunicorn process on ``127.0.0.1``: the Docker image's command line with W workers, T threads.

    Parameters
    ----------
    name : str
    env : dict
        Its whole environment.
    workers, threads : int
    app : str
        gunicorn application spec.
    log_path : Path
    """

    def __init__(self, name: str, env: dict, workers: int, threads: int, app: str, log_path: Path) -> None:
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                   "--threads", str(threads), "--timeout", "120", "--graceful-timeout", "30"]
        if Path("/dev/shm").is_dir():
            command += ["--worker-tmp-dir", "/dev/shm"]
        self.command = command + [app]
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(self.command, cwd=PROJECT_ROOT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until ``/readyz`` answers 200.

        Raises
        ------
        click.ClickException
            If the process exits or is not ready in time (its log's tail is shown).
        """
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise click.ClickException(f"replica {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                if requests.get(self.url + "/readyz", timeout=10).status_code == 200:
                    return
            time.sleep(0.3)
        raise click.ClickException(f"replica {self.name} not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def log_tail(self, n_chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n_chars:]
        return ""

    def stop(self) -> None:
        """SIGTERM (gunicorn lets requests in flight finish), then kill after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


@contextlib.contextmanager
def started_replicas(
    n_replicas: int,
    *,
    workers: int,
    threads: int,
    app: str = PRODUCTION_APP,
    pg_conn: str | None = None,
    torch_threads: int | None = None,
    extra_env: dict | None = None,
    data_dir: Path | None = None,
) -> Iterator[tuple[list[Replica], str]]:
    """Start ``n_replicas`` gunicorn replicas on one database; yield them and its URI.

    Parameters
    ----------
    pg_conn : str, optional
        Database of the replicas; None starts an embedded PostgreSQL under ``data_dir``
        (held by this process, stopped on exit).
    torch_threads : int, optional
        ``TORCH_THREADS`` and ``OMP_NUM_THREADS`` of the replicas (torch threads per worker).
    extra_env : dict, optional
        More environment variables of the replicas (e.g. ``INGEST_MAX_IN_FLIGHT``).
    data_dir : Path, optional
        Where the database and each replica's ``DATA_DIR`` live; default a temporary folder,
        removed on exit.

    Raises
    ------
    click.ClickException
        If a replica does not start.
    """
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sorterbot-load-")))
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        if pg_conn is None:
            from sorterbot_cloud.db import start_embedded

            embedded = start_embedded(data_dir / "pgdata", cleanup_mode="stop")
            stack.callback(embedded.release)
            pg_conn = embedded.ensure_database("sorterbot")
        env = {k: v for k, v in os.environ.items() if k not in ("API_TOKEN", "CONTROL_PANEL_HOST", "PG_CONN")}
        env.update(MODE="local", PG_CONN=pg_conn, LOG_JSON="1",
                   PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p))
        if torch_threads:
            env.update(TORCH_THREADS=str(torch_threads), OMP_NUM_THREADS=str(torch_threads))
        env.update({k: str(v) for k, v in (extra_env or {}).items()})
        replicas: list[Replica] = []
        for k in range(n_replicas):
            replica_dir = data_dir / f"replica{k}"
            replica_dir.mkdir(exist_ok=True)
            replica = Replica(f"r{k}", {**env, "DATA_DIR": str(replica_dir)}, workers, threads, app,
                              data_dir / f"replica{k}.log")
            replicas.append(replica)
            stack.callback(replica.stop)
        for replica in replicas:  # all start at once: migrations run under an advisory lock
            replica.wait_ready()
        yield replicas, pg_conn


def cpu_seconds(root_pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes and their live children.

    Processes that exited are no longer counted, so measure the difference over a phase in
    which the server's processes live throughout (gunicorn workers, pooled database
    backends). Processes that are gone or not readable count 0.
    """
    import psutil

    seen: dict[int, float] = {}
    for pid in root_pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for proc in family:
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            seen[proc.pid] = times.user + times.system
    return float(sum(seen.values()))


def postmaster_pid(repository) -> int | None:
    """The PostgreSQL server's process id when it runs on this machine (the parent of a backend), else None."""
    import psutil

    try:
        with repository.pool.connection() as conn:
            (backend,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        proc = psutil.Process(int(backend))
        return proc.ppid() if "postgres" in proc.name().lower() else None
    except Exception:  # noqa: BLE001 - a remote or foreign server: no CPU figure for it
        return None


# --------------------------------------------------------------------------- arms
@dataclasses.dataclass
class Attempt:
    """One HTTP request of the load: ``kind`` ingest or trigger, status (0: no answer), seconds."""

    kind: str
    arm: int
    status: int
    latency_s: float
    sent_s: float


@dataclasses.dataclass
class ArmRun:
    """What one simulated arm did: its ids, the frames stored (200), its trigger answer."""

    index: int
    arm_id: str
    session_id: str
    scene: str
    accepted: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    frame_latency_s: list[float] = dataclasses.field(default_factory=list)
    wire: Any = None
    trigger_status: int | None = None
    schedule_lag_s: float = 0.0


def _post(http, method_url: str, deadline_s: float, timeout_s: float, **kwargs):
    """POST; returns (status, response or None, seconds). Status 0: no answer (connection error, timeout)."""
    import requests

    started = time.perf_counter()
    try:
        response = http.post(method_url, timeout=max(0.5, min(timeout_s, deadline_s - time.monotonic())), **kwargs)
    except (requests.ConnectionError, requests.Timeout):
        return 0, None, time.perf_counter() - started
    return response.status_code, response, time.perf_counter() - started


def _retry_after_s(response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except (TypeError, ValueError):
        return 1.0


def run_arm(index: int, scene: Scene, urls: list[str], run_id: str, rate_fps: float, start_s: float,
            deadline_s: float, attempts: list[Attempt], lock: threading.Lock, *, max_retries: int = 10,
            max_retry_wait_s: float = 5.0, timeout_s: float = 120.0, token: str | None = None) -> ArmRun:
    """Post one session like an arm, then trigger it.

    Frame k is scheduled at ``start_s + k / rate_fps`` (monotonic clock); it leaves then, or
    when the previous frame's answer came if that was later. A 503 (or no answer) is
    retried after ``Retry-After`` (capped at ``max_retry_wait_s``), at most ``max_retries``
    times; other errors are not retried. Request ``i`` of the arm goes to
    ``urls[(index + i) % len(urls)]``.

    Returns
    -------
    ArmRun
    """
    import requests

    run = ArmRun(index, f"LOAD{index:03d}", f"{run_id}_a{index:03d}", scene.name)
    n_sent = 0
    with requests.Session() as http:
        if token:
            http.headers["Authorization"] = f"Bearer {token}"
        for k, (image_name, data, content_type) in enumerate(scene.frames):
            scheduled_s = start_s + k / rate_fps
            time.sleep(max(0.0, scheduled_s - time.monotonic()))
            run.schedule_lag_s = max(run.schedule_lag_s, time.monotonic() - scheduled_s)
            first_s, status = time.monotonic(), None
            for _attempt in range(max_retries + 1):
                if time.monotonic() >= deadline_s:
                    break
                url = urls[(index + n_sent) % len(urls)]
                n_sent += 1
                sent_s = time.monotonic()
                status, response, latency_s = _post(
                    http, f"{url}/process_image", deadline_s, timeout_s,
                    params={"arm_id": run.arm_id, "session_id": run.session_id, "image_name": image_name},
                    data=data, headers={"Content-Type": content_type})
                with lock:
                    attempts.append(Attempt("ingest", index, status, latency_s, sent_s - start_s))
                if status not in (0, 503):
                    break
                wait_s = _retry_after_s(response) if response is not None else 1.0
                time.sleep(max(0.0, min(wait_s, max_retry_wait_s, deadline_s - time.monotonic())))
            if status == 200:
                run.accepted.append(image_name)
                run.frame_latency_s.append(time.monotonic() - first_s)
            else:
                run.failed.append(image_name)
        if time.monotonic() < deadline_s and run.accepted:
            url = urls[(index + n_sent) % len(urls)]
            sent_s = time.monotonic()
            status, response, latency_s = _post(
                http, f"{url}/get_commands_of_session", deadline_s, timeout_s,
                params={"session_id": run.session_id}, json={**scene.constants, "arm_id": run.arm_id})
            with lock:
                attempts.append(Attempt("trigger", index, status, latency_s, sent_s - start_s))
            run.trigger_status = status
            if status == 200:
                run.wire = response.json()
    return run


def _percentiles_ms(values_s: list[float]) -> dict:
    if not values_s:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ms = np.asarray(values_s, float) * 1000.0
    return {"n": int(ms.size), **{f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
            "max": round(float(ms.max()), 1)}


def run_load(scenes: list[Scene], urls: list[str], n_arms: int, rate_fps: float, run_id: str, *,
             duration_limit_s: float, max_retries: int = 10, token: str | None = None,
             cpu_pids: dict[str, list[int]] | None = None) -> dict:
    """Drive ``n_arms`` arms at once (arm i posts scene ``i % len(scenes)``) and summarise.

    Parameters
    ----------
    cpu_pids : dict of str to list of int, optional
        Server processes on this machine by role (``{"gunicorn": [...], "postgres": [...]}``):
        the CPU seconds they use during the phase (with their children) are reported.

    Returns
    -------
    dict
        ``n_arms``, ``rate_fps_per_arm``, ``offered_fps``, ``wall_s`` (from the first
        frame sent to the last frame answered), ``sustained_fps`` (frames stored / ``wall_s``;
        for a load the service keeps up with, about ``offered_fps * F / (F - 1)`` for F frames
        an arm),
        ``ingest_ms`` and ``trigger_ms`` (``p50``, ``p95``, ``p99``, ``max`` of 200 answers),
        ``frame_ms`` (first try to stored, retries included), ``status_counts``
        (``{"ingest": {"200": n, "503": m, ...}, "trigger": ...}``; ``"0"`` = no answer),
        ``frames_stored``, ``frames_failed``, ``max_schedule_lag_s``, ``server_cpu_s`` (by
        role) and ``frames_per_server_cpu_s`` (frames stored per CPU second of the server's
        processes: frames/s one fully used vCPU gives), ``arms`` (per arm: ids, scene,
        frames, trigger status, wire answer).
    """
    load_before = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    attempts: list[Attempt] = []
    lock = threading.Lock()
    start_s = time.monotonic() + 0.2
    deadline_s = start_s + duration_limit_s
    cpu_before = {role: cpu_seconds(pids) for role, pids in (cpu_pids or {}).items()}
    with ThreadPoolExecutor(max_workers=n_arms, thread_name_prefix="arm") as pool:
        futures = [pool.submit(run_arm, i, scenes[i % len(scenes)], urls, run_id, rate_fps, start_s, deadline_s,
                               attempts, lock, max_retries=max_retries, token=token) for i in range(n_arms)]
        arms = [f.result() for f in futures]
    ingest = [a for a in attempts if a.kind == "ingest"]
    end_s = max((a.sent_s + a.latency_s for a in ingest), default=0.0)
    first_s = min((a.sent_s for a in ingest), default=0.0)
    wall_s = max(end_s - first_s, 1e-9)
    counts: dict[str, dict[str, int]] = {"ingest": {}, "trigger": {}}
    for a in attempts:
        counts[a.kind][str(a.status)] = counts[a.kind].get(str(a.status), 0) + 1
    stored = sum(len(a.accepted) for a in arms)
    cpu_s = {role: round(cpu_seconds(pids) - cpu_before[role], 3) for role, pids in (cpu_pids or {}).items()}
    total_cpu_s = sum(cpu_s.values())
    return {
        "n_arms": n_arms,
        "rate_fps_per_arm": rate_fps,
        "offered_fps": round(n_arms * rate_fps, 3),
        "wall_s": round(wall_s, 3),
        "sustained_fps": round(stored / wall_s, 3),
        "ingest_ms": _percentiles_ms([a.latency_s for a in attempts if a.kind == "ingest" and a.status == 200]),
        "frame_ms": _percentiles_ms([s for arm in arms for s in arm.frame_latency_s]),
        "trigger_ms": _percentiles_ms([a.latency_s for a in attempts if a.kind == "trigger" and a.status == 200]),
        "status_counts": counts,
        "frames_stored": stored,
        "frames_failed": sum(len(a.failed) for a in arms),
        "max_schedule_lag_s": round(max((a.schedule_lag_s for a in arms), default=0.0), 3),
        "timed_out": time.monotonic() >= deadline_s,
        "load_average_before_1_5_15": load_before,
        "server_cpu_s": cpu_s or None,
        "frames_per_server_cpu_s": round(stored / total_cpu_s, 3) if total_cpu_s > 0 else None,
        "arms": [dataclasses.asdict(a) | {"frame_latency_s": None} for a in arms],
    }


# --------------------------------------------------------------------------- consistency
def run_reference(scenes: list[Scene], url: str, run_id: str, *, token: str | None = None,
                  timeout_s: float = 120.0) -> list[dict]:
    """Post every scene once more, one frame at a time, to its own session; trigger it.

    Returns
    -------
    list of dict
        Per scene: ``arm_id``, ``session_id``, ``scene``, ``ingest`` (answers by image
        name), ``ingest_latency_s`` (per frame, one request at a time: the baseline of the
        same run) and ``wire``.

    Raises
    ------
    click.ClickException
        On a non-200 answer.
    """
    import requests

    out = []
    with requests.Session() as http:
        if token:
            http.headers["Authorization"] = f"Bearer {token}"
        for k, scene in enumerate(scenes):
            session_id = f"{run_id}_ref{k:02d}"
            ingest, latencies_s = {}, []
            for image_name, data, content_type in scene.frames:
                started_s = time.perf_counter()
                response = http.post(f"{url}/process_image", timeout=timeout_s, data=data,
                                     params={"arm_id": REFERENCE_ARM_ID, "session_id": session_id,
                                             "image_name": image_name}, headers={"Content-Type": content_type})
                if response.status_code != 200:
                    raise click.ClickException(f"reference ingest answered {response.status_code}: {response.text[:300]}")
                latencies_s.append(time.perf_counter() - started_s)
                ingest[image_name] = response.json()
            response = http.post(f"{url}/get_commands_of_session", params={"session_id": session_id}, timeout=timeout_s,
                                 json={**scene.constants, "arm_id": REFERENCE_ARM_ID})
            if response.status_code != 200:
                raise click.ClickException(f"reference trigger answered {response.status_code}: {response.text[:300]}")
            out.append({"arm_id": REFERENCE_ARM_ID, "session_id": session_id, "scene": scene.name,
                        "ingest": ingest, "ingest_latency_s": latencies_s, "wire": response.json()})
    return out


def _wire_equal(a, b) -> bool:
    if a is None or b is None:
        return a is b
    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    return a_arr.shape == b_arr.shape and bool(np.allclose(a_arr, b_arr, atol=PW_ATOL_US, rtol=0))


def _stored(repository, arm_id: str, session_id: str) -> dict:
    """A session as stored: frames (image name -> count of rows), detections by frame, latest wire."""
    from sorterbot_cloud.errors import UnknownSession

    try:
        frames = repository.session_frames(arm_id, session_id)
        detections = repository.load_session(arm_id, session_id)
    except UnknownSession:
        frames, detections = [], []
    by_frame: dict[str, list] = {}
    for d in detections:
        by_frame.setdefault(d.image_name, []).append((d.class_id, np.asarray(d.box_xyxy, float), float(d.score)))
    names: dict[str, int] = {}
    for f in frames:
        names[f["image_name"]] = names.get(f["image_name"], 0) + 1
    record = repository.latest_commands(arm_id, session_id)
    wire = None
    if record is not None:
        result = record["result"]
        wire = result.get("wire") if isinstance(result, dict) else result
    return {"frames": names, "n_detections": {f["image_name"]: int(f["n_detections"]) for f in frames},
            "detections": by_frame, "wire": wire}


def _detections_equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        ca == cb and np.allclose(ba, bb, atol=BOX_ATOL_PX, rtol=0) and abs(sa - sb) <= SCORE_ATOL
        for (ca, ba, sa), (cb, bb, sb) in zip(a, b, strict=True))


def check_consistency(arms: list[dict], references: list[dict], scenes: list[Scene], repository) -> dict:
    """Compare every arm's stored session with the sequential reference of its scene.

    For each arm: the frames stored are exactly the scene's (none lost, none stored twice,
    none extra), each frame's detections equal the reference's (class, box within
    :data:`BOX_ATOL_PX` px, score within :data:`SCORE_ATOL`), and the commands stored and
    answered equal the reference's (pulse widths within :data:`PW_ATOL_US`).

    Parameters
    ----------
    arms : list of dict
        ``run_load(...)["arms"]``.
    references : list of dict
        :func:`run_reference`, one per scene.
    repository : sorterbot_cloud.db.Repository
        On the service's database.

    Returns
    -------
    dict
        ``ok`` (bool), ``n_sessions``, ``problems`` (list of str, one per mismatch).
    """
    problems: list[str] = []
    by_scene = {r["scene"]: r for r in references}
    expected_frames = {s.name: [f[0] for f in s.frames] for s in scenes}
    ref_stored = {name: _stored(repository, r["arm_id"], r["session_id"]) for name, r in by_scene.items()}
    for arm in arms:
        who = f"arm {arm['arm_id']} session {arm['session_id']}"
        ref = ref_stored[arm["scene"]]
        got = _stored(repository, arm["arm_id"], arm["session_id"])
        expected = expected_frames[arm["scene"]]
        lost = sorted(set(expected) - set(got["frames"]))
        extra = sorted(set(got["frames"]) - set(expected))
        twice = sorted(n for n, c in got["frames"].items() if c > 1)
        if lost:
            problems.append(f"{who}: frames not stored: {', '.join(lost)}")
        if extra:
            problems.append(f"{who}: frames stored that were never posted: {', '.join(extra)}")
        if twice:
            problems.append(f"{who}: frames stored more than once: {', '.join(twice)}")
        for name in expected:
            if name in got["frames"] and not _detections_equal(got["detections"].get(name, []),
                                                               ref["detections"].get(name, [])):
                problems.append(f"{who}: frame {name} has {got['n_detections'].get(name, 0)} detections stored, "
                                f"the sequential run {ref['n_detections'].get(name, 0)}, or they differ")
        if not _wire_equal(got["wire"], ref["wire"]):
            problems.append(f"{who}: stored commands differ from the sequential run's "
                            f"({None if got['wire'] is None else len(got['wire'])} vs {len(ref['wire'] or [])} commands)")
        if arm.get("wire") is not None and not _wire_equal(arm["wire"], by_scene[arm["scene"]]["wire"]):
            problems.append(f"{who}: the trigger answered other commands than the sequential run")
    return {"ok": not problems, "n_sessions": len(arms), "problems": problems}


# --------------------------------------------------------------------------- command
def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(not 1 <= v <= MAX_ARMS for v in values):
        raise click.BadParameter(f"each value must be in 1..{MAX_ARMS}, got {text!r}")
    return values


def _print_run(fig: dict) -> None:
    ing, trig, counts = fig["ingest_ms"], fig["trigger_ms"], fig["status_counts"]
    statuses = " ".join(f"{kind} {k}:{v}" for kind in ("ingest", "trigger") for k, v in sorted(counts[kind].items()))
    click.echo(f"  arms {fig['n_arms']:3d}  offered {fig['offered_fps']:6.2f} fps  sustained {fig['sustained_fps']:6.2f} fps  "
               f"ingest p50/p95/p99 {ing['p50']}/{ing['p95']}/{ing['p99']} ms  "
               f"trigger p50/p95/p99 {trig['p50']}/{trig['p95']}/{trig['p99']} ms  "
               f"stored {fig['frames_stored']} failed {fig['frames_failed']}  [{statuses}]"
               + (f"  {fig['frames_per_server_cpu_s']} frames per server CPU-s" if fig.get("frames_per_server_cpu_s") else "")
               + ("  check ok" if fig.get("check", {}).get("ok") else "  CHECK FAILED" if "check" in fig else ""))


def largest_served(runs: list[dict], target_s: float = P95_TARGET_S) -> int | None:
    """The largest arm count whose ingest p95 stayed under ``target_s`` with every frame stored."""
    served = [r["n_arms"] for r in runs if r["ingest_ms"]["p95"] is not None
              and r["ingest_ms"]["p95"] < target_s * 1000.0 and r["frames_failed"] == 0]
    return max(served) if served else None


@click.command("load")
@click.option("--arms", "arms_text", default="4", show_default=True,
              help=f"Simulated arms at once; a comma list (1,2,4,8) runs one load phase per value (1..{MAX_ARMS}).")
@click.option("--frames-per-arm", default=5, show_default=True, type=click.IntRange(1, MAX_FRAMES_PER_ARM),
              help="Frames each arm posts (evenly spaced over its session's pulse widths).")
@click.option("--rate", "rate_fps", default=1.0, show_default=True, type=click.FloatRange(0.01, MAX_RATE_FPS),
              help="Frames per second per arm.")
@click.option("--url", "urls", multiple=True, help="Base URL of a running service (repeat for replicas).")
@click.option("--serve", is_flag=True, help="Start the replicas here (gunicorn, the Docker image's command line).")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, MAX_REPLICAS), help="With --serve.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 16), help="gunicorn workers per replica.")
@click.option("--threads", "http_threads", default=12, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn threads per worker (>= INGEST_MAX_IN_FLIGHT + INGEST_MAX_QUEUED + 2).")
@click.option("--torch-threads", type=click.IntRange(1, 64), default=None,
              help="TORCH_THREADS of each worker (default: bench --threads, else torch's choice).")
@click.option("--max-in-flight", type=click.IntRange(0, 64), default=None, help="INGEST_MAX_IN_FLIGHT of the replicas.")
@click.option("--max-queued", type=click.IntRange(0, 1024), default=None, help="INGEST_MAX_QUEUED of the replicas.")
@click.option("--app", default=PRODUCTION_APP, show_default=True, help="gunicorn application of the replicas.")
@click.option("--pg-conn", envvar="PG_CONN", default=None,
              help="Database of the service (for the check; with --serve, of the replicas). Default with --serve: "
                   "an embedded PostgreSQL in a temporary folder.")
@click.option("--scenes", "n_scenes", default=2, show_default=True, type=click.IntRange(1, 32),
              help="Distinct sessions; arm i posts scene i % scenes.")
@click.option("--sessions-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Session folders (<pw>.jpg + ground_truth.json) instead of simulated ones.")
@click.option("--cache", default="out/bench/sessions", show_default=True, type=click.Path(path_type=Path),
              help="Cache of simulated sessions.")
@click.option("--duration-limit-s", default=300.0, show_default=True, type=click.FloatRange(1.0, 3600.0),
              help="Longest load phase; arms stop posting then.")
@click.option("--max-retries", default=10, show_default=True, type=click.IntRange(0, 100),
              help="Retries of a frame answered 503 (after its Retry-After) or not answered.")
@click.option("--no-check", is_flag=True, help="Skip the sequential reference run and the consistency check.")
@click.option("--allow-remote", is_flag=True, help="Allow a --url that is not on this machine.")
@click.option("--token", envvar="API_TOKEN", default=None, help="Bearer token of a --url service.")
@click.option("--out", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.pass_context
def load(ctx, arms_text, frames_per_arm, rate_fps, urls, serve, replicas, workers, http_threads, torch_threads,
         max_in_flight, max_queued, app, pg_conn, n_scenes, sessions_dir, cache, duration_limit_s, max_retries,
         no_check, allow_remote, token, json_out) -> None:
    """Load test: N simulated arms post sessions at once over the original client's protocol.

    Reports frames/s sustained, ingest and trigger latency percentiles and answers by
    status, then checks every session against a sequential run (exit status 1 if one
    differs). Examples:

      sorterbot-cloud bench load --serve --arms 1,2,4 --frames-per-arm 6 --rate 1 --torch-threads 1

      sorterbot-cloud bench load --url http://127.0.0.1:5000 --arms 4 --pg-conn postgresql://...
    """
    arm_counts = _ints(arms_text)
    if serve == bool(urls):
        raise click.UsageError("give either --serve or --url")
    if torch_threads is None and ctx.parent is not None:
        torch_threads = ctx.parent.params.get("threads")
    urls = [check_url(u, allow_remote) for u in urls]
    machine = machine_info()
    click.echo(f"machine: {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable), {machine['cpu_model']}, "
               f"{machine['memory_gib']} GiB, load average {machine['load_average_1_5_15']}")
    scenes = [load_scene(f, frames_per_arm) for f in scene_folders(sessions_dir, n_scenes, cache)]
    click.echo(f"scenes: {', '.join(s.name for s in scenes)} ({frames_per_arm} frames each, in memory)")
    run_id = "load_" + uuid.uuid4().hex[:8]
    config = {"arms": arm_counts, "frames_per_arm": frames_per_arm, "rate_fps_per_arm": rate_fps, "serve": serve,
              "replicas": replicas if serve else len(urls), "workers": workers if serve else None,
              "threads": http_threads if serve else None, "torch_threads": torch_threads,
              "max_in_flight": max_in_flight, "max_queued": max_queued, "app": app if serve else None,
              "duration_limit_s": duration_limit_s, "run_id": run_id}
    extra_env = {k: v for k, v in (("INGEST_MAX_IN_FLIGHT", max_in_flight), ("INGEST_MAX_QUEUED", max_queued))
                 if v is not None}
    with contextlib.ExitStack() as stack:
        config["external_db"] = bool(pg_conn)
        if serve:
            click.echo(f"starting {replicas} replica(s): gunicorn --workers {workers} --threads {http_threads} {app} "
                       f"(TORCH_THREADS={torch_threads or 'default'}) ...")
            started, pg_conn = stack.enter_context(started_replicas(
                replicas, workers=workers, threads=http_threads, app=app, pg_conn=pg_conn,
                torch_threads=torch_threads, extra_env=extra_env))
            urls = [r.url for r in started]
            config["command"] = started[0].command
        repository = None
        if pg_conn:
            from sorterbot_cloud.db import Database, Repository

            database = Database(pg_conn, max_size=2, run_migrations=False)
            stack.callback(database.close)
            repository = Repository(database.pool)
        cpu_pids = {}
        if serve:
            cpu_pids["gunicorn"] = [r.process.pid for r in started]
            pg_pid = postmaster_pid(repository) if repository is not None else None
            if pg_pid is not None:
                cpu_pids["postgres"] = [pg_pid]
        _warm_up(urls, scenes[0], run_id, workers, token)
        runs = []
        for n_arms in arm_counts:
            fig = run_load(scenes, urls, n_arms, rate_fps, f"{run_id}_n{n_arms}", duration_limit_s=duration_limit_s,
                           max_retries=max_retries, token=token, cpu_pids=cpu_pids)
            _print_run(fig)
            runs.append(fig)
        check = None
        if not no_check:
            if repository is None:
                click.echo("consistency check skipped: no database to read (give --pg-conn)")
            else:
                references = run_reference(scenes, urls[0], run_id, token=token)
                baseline = _percentiles_ms([t for r in references for t in r["ingest_latency_s"]])
                click.echo(f"sequential reference (one frame at a time): ingest p50 {baseline['p50']} ms, "
                           f"{1000.0 / baseline['p50']:.2f} frames/s")
                problems = []
                for fig in runs:
                    fig["check"] = check_consistency(fig["arms"], references, scenes, repository)
                    problems += fig["check"]["problems"]
                check = {"ok": not problems, "problems": problems, "sequential_ingest_ms": baseline,
                         "n_sessions": sum(f["check"]["n_sessions"] for f in runs)}
                if not serve or config.get("external_db"):
                    _delete_sessions(repository, runs, references, run_id, workers)
        machine["load_average_after_1_5_15"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    served = largest_served(runs)
    click.echo(f"largest arm count with ingest p95 < {P95_TARGET_S:g} s and every frame stored: {served}")
    if check is not None:
        click.echo("consistency: every session equals the sequential run" if check["ok"]
                   else "consistency FAILED:\n  " + "\n  ".join(check["problems"][:20]))
    report = {"machine": machine, "config": config, "runs": runs, "largest_arms_p95_under_1s": served, "check": check}
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1, default=str))
        click.echo(f"wrote {json_out}")
    if check is not None and not check["ok"]:
        sys.exit(1)


def _warm_up(urls: list[str], scene: Scene, run_id: str, workers: int, token: str | None) -> None:
    """Post a frame to every replica (as many at once as it has workers), twice: first requests load lazily."""
    import requests

    def post(url: str, k: int) -> None:
        image_name, data, content_type = scene.frames[0]
        headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
        with contextlib.suppress(requests.RequestException):
            requests.post(f"{url}/process_image", data=data, headers=headers, timeout=120,
                          params={"arm_id": "LOADWARM", "session_id": f"{run_id}_w{k}", "image_name": image_name})

    with ThreadPoolExecutor(max_workers=max(1, len(urls) * workers)) as pool:
        for _round in range(2):
            list(pool.map(lambda job: post(*job), [(u, k) for u in urls for k in range(workers)]))


def _delete_sessions(repository, runs: list[dict], references: list[dict], run_id: str, n_warm: int) -> None:
    """Remove the run's sessions (load, reference, warm-up) from a database that outlives it."""
    for k in range(n_warm):
        repository.delete_session("LOADWARM", f"{run_id}_w{k}")
    for fig in runs:
        for arm in fig["arms"]:
            repository.delete_session(arm["arm_id"], arm["session_id"])
    for ref in references:
        repository.delete_session(ref["arm_id"], ref["session_id"])


__all__ = ["Scene", "check_consistency", "check_url", "load", "load_scene", "machine_info", "run_load",
           "run_reference", "scene_folders", "started_replicas"]
