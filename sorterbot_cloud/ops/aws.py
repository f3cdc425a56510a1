"""AWS for the ``aws-dev`` and ``production`` modes: S3 image archive, SSM parameters.

- :meth:`AwsContext.from_settings` builds boto3 S3 and SSM clients for
  ``settings.deploy_region`` (``settings.aws_endpoint_url`` overrides both endpoints, e.g.
  moto's server in tests) and finds the bucket: ``settings.s3_bucket`` when set, else
  ``sorterbot-<suffix>`` with the suffix read from the SSM parameter ``RESOURCE_SUFFIX``
  (the naming of the original SorterBot stack).
- :func:`resolve_pg_conn` returns the database connection string: in ``production`` the
  SSM SecureString parameter ``PG_CONN`` (decrypted), in the other modes ``settings.pg_conn``.
- :meth:`AwsContext.read_frame` reads a frame the original client uploaded itself, at key
  ``<arm_id>/<session_id>/<image_name>`` (clients of late April 2020) or
  ``<session_id>/<image_name>`` (earlier ones; docs/design.rst, Wire protocol: an empty
  ``/process_image`` body).
- :class:`UploadQueue` copies archived images to S3 off the request path, with retries
  and exponential backoff. Each submitted file is first recorded by a spool marker on
  disk, removed only once S3 has the object, so a frame submitted while S3 is down (or
  before a crash) is uploaded when S3 answers again, also after a restart.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import os
import random
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import BadRequest, ServiceUnavailable
from ..structures import ID_PATTERN, IMAGE_NAME_PATTERN
from . import metrics

log = logging.getLogger(__name__)

AWS_MODES = ("aws-dev", "production")
RESOURCE_SUFFIX_PARAMETER = "RESOURCE_SUFFIX"
PG_CONN_PARAMETER = "PG_CONN"
BUCKET_PREFIX = "sorterbot-"


def _botocore_config(connect_timeout_s: float = 3.0, read_timeout_s: float = 15.0, max_attempts: int = 2):
    from botocore.config import Config

    # Few attempts inside botocore: UploadQueue does its own, slower retries.
    return Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
    )


def make_client(service: str, settings, **config: Any):
    """Return a boto3 client of ``service`` for ``settings.deploy_region`` and
    ``settings.aws_endpoint_url`` (credentials from the usual AWS chain).

    Raises
    ------
    ValueError
        If ``settings.deploy_region`` is not set.
    """
    import boto3

    if not settings.deploy_region:
        raise ValueError("DEPLOY_REGION must be set to use AWS (modes aws-dev and production)")
    return boto3.session.Session().client(
        service,
        region_name=settings.deploy_region,
        endpoint_url=settings.aws_endpoint_url or None,
        config=_botocore_config(**config),
    )


def read_parameter(ssm_client, name: str, *, decrypt: bool = False) -> str:
    """Return the value of SSM parameter ``name``.

    Raises
    ------
    ServiceUnavailable
        If the parameter does not exist or SSM cannot be reached.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = ssm_client.get_parameter(Name=name, WithDecryption=decrypt)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ServiceUnavailable(f"SSM parameter {name!r} could not be read ({code or exc})") from exc
    except BotoCoreError as exc:
        raise ServiceUnavailable(f"SSM is not reachable to read {name!r} ({type(exc).__name__})") from exc
    return response["Parameter"]["Value"]


def resolve_pg_conn(settings, *, ssm_client=None) -> str | None:
    """Return the libpq connection string the service should use.

    ``production``: the SecureString SSM parameter ``PG_CONN``, decrypted. Other modes:
    ``settings.pg_conn`` (from the ``PG_CONN`` environment variable; None means the
    embedded PostgreSQL).

    Raises
    ------
    ServiceUnavailable
        In production, if the parameter cannot be read.
    """
    if settings.mode != "production":
        return settings.pg_conn
    ssm_client = ssm_client or make_client("ssm", settings)
    return read_parameter(ssm_client, PG_CONN_PARAMETER, decrypt=True)


def frame_key(session_id: str, image_name: str) -> str:
    """Return the S3 key of a frame, ``<session_id>/<image_name>`` (the original client's layout).

    Raises
    ------
    BadRequest
        If ``session_id`` or ``image_name`` is malformed (this also keeps keys free of ``/`` and ``..``).
    """
    if not isinstance(session_id, str) or not ID_PATTERN.fullmatch(session_id):
        raise BadRequest(f"session_id must be 1-64 of [A-Za-z0-9_.-], got {session_id!r}")
    if not isinstance(image_name, str) or not IMAGE_NAME_PATTERN.fullmatch(image_name):
        raise BadRequest(f"image_name must look like '<pulse width>.jpg' (e.g. '1200.jpg'), got {image_name!r}")
    return f"{session_id}/{image_name}"


def archive_key(arm_id: str, session_id: str, image_name: str) -> str:
    """Return the S3 key of an archived frame, ``<arm_id>/<session_id>/<image_name>``.

    Frames archived before this layout are at :func:`frame_key` (``<session_id>/<image_name>``,
    so two arms with one session id overwrote each other there); they are still read
    (:meth:`S3MirroredArchive.get`).

    Raises
    ------
    BadRequest
        If an id or ``image_name`` is malformed.
    """
    if not isinstance(arm_id, str) or not ID_PATTERN.fullmatch(arm_id):
        raise BadRequest(f"arm_id must be 1-64 of [A-Za-z0-9_.-], got {arm_id!r}")
    return f"{arm_id}/{frame_key(session_id, image_name)}"


def overview_key(arm_id: str, session_id: str) -> str:
    """Return the S3 key of a session overview image, ``overviews/<arm_id>/<session_id>.png``.

    Raises
    ------
    BadRequest
        If an id is malformed.
    """
    for name, value in (("arm_id", arm_id), ("session_id", session_id)):
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise BadRequest(f"{name} must be 1-64 of [A-Za-z0-9_.-], got {value!r}")
    return f"overviews/{arm_id}/{session_id}.png"


@dataclass
class AwsContext:
    """S3 and SSM clients, the bucket and the region of one deployment.

    Parameters
    ----------
    s3, ssm : botocore clients
    bucket : str
    region : str
    """

    s3: Any
    ssm: Any
    bucket: str
    region: str

    @classmethod
    def from_settings(cls, settings) -> "AwsContext":
        """Build clients and find the bucket (see the module docstring).

        Raises
        ------
        ValueError
            If ``settings.deploy_region`` is not set.
        ServiceUnavailable
            If the bucket is not configured and ``RESOURCE_SUFFIX`` cannot be read.
        """
        s3 = make_client("s3", settings)
        ssm = make_client("ssm", settings)
        bucket = settings.s3_bucket or BUCKET_PREFIX + read_parameter(ssm, RESOURCE_SUFFIX_PARAMETER)
        return cls(s3=s3, ssm=ssm, bucket=bucket, region=settings.deploy_region)

    def read_frame(self, session_id: str, image_name: str, arm_id: str | None = None) -> bytes:
        """Return a frame the client uploaded to the bucket itself.

        HTTP-era clients of late April 2020 upload to ``<arm_id>/<session_id>/<image_name>``
        (:func:`archive_key`), earlier ones to ``<session_id>/<image_name>``
        (:func:`frame_key`): with ``arm_id`` the first key is read, else the second;
        without ``arm_id`` only the second.

        Parameters
        ----------
        session_id, image_name : str
        arm_id : str, optional
            The arm of the request.

        Raises
        ------
        BadRequest
            If an id is malformed or no such object exists (the client must upload the
            frame first or send it in the request body).
        ServiceUnavailable
            If S3 cannot be reached or refuses the read.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        keys = [frame_key(session_id, image_name)]
        if arm_id is not None:
            keys.insert(0, archive_key(arm_id, session_id, image_name))
        for key in keys:
            try:
                return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in ("NoSuchKey", "404", "NotFound"):
                    raise ServiceUnavailable(f"S3 refused reading s3://{self.bucket}/{key} ({code})") from exc
            except BotoCoreError as exc:
                raise ServiceUnavailable(f"S3 is not reachable to read s3://{self.bucket}/{key} ({type(exc).__name__})") from exc
        raise BadRequest(
            f"empty body and no frame at {' or '.join(f's3://{self.bucket}/{key}' for key in keys)}: "
            "upload the frame there first or send the image bytes in the request body"
        )

    def upload_queue(self, spool_dir: str | Path, **kwargs: Any) -> "UploadQueue":
        """Return a started :class:`UploadQueue` into this context's bucket."""
        return UploadQueue(self.s3, self.bucket, spool_dir, **kwargs)


_contexts: dict[Any, AwsContext] = {}
_queues: dict[Any, "UploadQueue"] = {}
_registry_lock = threading.Lock()


def context_for(settings) -> AwsContext:
    """Return the process's :class:`AwsContext` for ``settings`` (built once, then shared).

    Raises
    ------
    ValueError, ServiceUnavailable
        As :meth:`AwsContext.from_settings`.
    """
    with _registry_lock:
        context = _contexts.get(settings)
        if context is None:
            context = _contexts[settings] = AwsContext.from_settings(settings)
        return context


def upload_queue_for(settings) -> "UploadQueue":
    """Return the process's started :class:`UploadQueue` for ``settings``, spooling under
    ``settings.data_dir / "upload-spool"`` (built once, then shared)."""
    context = context_for(settings)
    with _registry_lock:
        uploads = _queues.get(settings)
        if uploads is None:
            uploads = _queues[settings] = context.upload_queue(Path(settings.data_dir) / "upload-spool")
        return uploads


def read_frame(settings, session_id: str, image_name: str, arm_id: str | None = None) -> bytes:
    """Module-level form of :meth:`AwsContext.read_frame` on :func:`context_for` ``(settings)``."""
    return context_for(settings).read_frame(session_id, image_name, arm_id)


class S3MirroredArchive:
    """An image archive that keeps frames on local disk and copies each one to S3.

    ``put`` and ``staged`` write through the wrapped archive (the request waits for the
    local disk only), then submit the file to the :class:`UploadQueue` at key
    ``<arm_id>/<session_id>/<image_name>`` (:func:`archive_key`). ``get`` reads the local
    disk, and a frame missing there (a fresh replica, a lost volume) from S3: at its
    :func:`archive_key`, else at the key of frames archived before arms had their own
    keys, ``<session_id>/<image_name>`` (:func:`frame_key`). Everything else is delegated.

    Parameters
    ----------
    disk : object with ``staged(arm_id, session_id, image_name, data)`` (a context manager
        yielding the URI) and ``path_of(...) -> Path``
        e.g. :class:`sorterbot_cloud.storage.DiskArchive`.
    uploads : UploadQueue
    """

    def __init__(self, disk, uploads: "UploadQueue"):
        self.disk = disk
        self.uploads = uploads

    def put(self, arm_id: str, session_id: str, image_name: str, data: bytes) -> str:
        """Store on disk, schedule the S3 copy, return the local archive's URI.

        Raises
        ------
        BadRequest
            On a malformed id or image name (from the disk archive).
        ServiceUnavailable
            If the S3 copy cannot be spooled (the local disk refuses the marker).
        """
        with self.staged(arm_id, session_id, image_name, data) as uri:
            pass
        return uri

    @contextmanager
    def staged(self, arm_id: str, session_id: str, image_name: str, data: bytes) -> Iterator[str]:
        """The disk archive's ``staged`` (the frame is put in place only if the block
        succeeds), then the S3 copy is scheduled; nothing is queued when the block raises.

        Yields
        ------
        str
            The local archive's URI.

        Raises
        ------
        BadRequest
            On a malformed id or image name (from the disk archive).
        ServiceUnavailable
            If the S3 copy cannot be spooled (the local disk refuses the marker).
        """
        with self.disk.staged(arm_id, session_id, image_name, data) as uri:
            yield uri
        try:
            self.uploads.submit(self.disk.path_of(arm_id, session_id, image_name), archive_key(arm_id, session_id, image_name))
        except OSError as exc:
            log.exception("cannot spool the S3 copy of %s/%s/%s", arm_id, session_id, image_name)
            raise ServiceUnavailable("the frame could not be queued for upload to S3 (local disk)") from exc

    def get(self, uri_or_key: str) -> bytes:
        """Read a frame by its local URI or key ``<arm_id>/<session_id>/<image_name>``:
        from the local disk, else from S3 (its :func:`archive_key`, then the older
        :func:`frame_key`).

        Raises
        ------
        BadRequest
            If the URI or key is malformed.
        FileNotFoundError
            If neither the disk nor S3 holds the frame.
        ServiceUnavailable
            If the frame is not on disk and S3 cannot be read.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.disk.get(uri_or_key)
        except FileNotFoundError:
            arm_id, session_id, image_name = self.disk.parts_of(uri_or_key)
        keys = (archive_key(arm_id, session_id, image_name), frame_key(session_id, image_name))
        for key in keys:
            try:
                return self.uploads.client.get_object(Bucket=self.uploads.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in ("NoSuchKey", "404", "NotFound"):
                    raise ServiceUnavailable(f"S3 refused reading s3://{self.uploads.bucket}/{key} ({code})") from exc
            except BotoCoreError as exc:
                raise ServiceUnavailable(f"S3 is not reachable to read s3://{self.uploads.bucket}/{key} ({type(exc).__name__})") from exc
        raise FileNotFoundError(f"frame {arm_id}/{session_id}/{image_name} is neither on disk nor in S3 "
                                f"(s3://{self.uploads.bucket}/{keys[0]} or /{keys[1]})")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.disk, name)


def publish_overview(settings, arm_id: str, session_id: str, png: bytes) -> Path:
    """Write a session overview PNG to ``settings.overview_dir/<arm_id>/<session_id>.png``
    and, in the aws modes, queue its copy to S3 at :func:`overview_key`.

    Parameters
    ----------
    settings : Settings
    arm_id, session_id : str
    png : bytes
        The encoded PNG.

    Returns
    -------
    Path
        The local file.

    Raises
    ------
    BadRequest
        If an id is malformed.
    """
    key = overview_key(arm_id, session_id)  # validates both ids before touching the disk
    path = Path(settings.overview_dir) / arm_id / f"{session_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)
    if settings.mode in AWS_MODES:
        upload_queue_for(settings).submit(path, key)
    return path


def archive_from_settings(settings, disk=None):
    """The image archive of the mode: ``disk`` in ``local`` mode, in the aws modes an
    :class:`S3MirroredArchive` around it that uploads through :func:`upload_queue_for`.

    Parameters
    ----------
    settings : Settings
    disk : archive, optional
        Defaults to ``sorterbot_cloud.storage.DiskArchive(settings.image_dir)``.
    """
    if disk is None:
        from ..storage import DiskArchive

        disk = DiskArchive(settings.image_dir)
    if settings.mode not in AWS_MODES:
        return disk
    return S3MirroredArchive(disk, upload_queue_for(settings))


#: Running upload queues of this process; ``sorterbot_s3_uploads_pending`` counts their files.
_LIVE_QUEUES: "weakref.WeakSet[UploadQueue]" = weakref.WeakSet()


def _pending_in_process() -> float:
    keys = set()
    for queue in list(_LIVE_QUEUES):
        if not queue._closed:
            keys.update((str(queue.spool_dir), key) for key in list(queue._entries))
    return float(len(keys))


metrics.S3_PENDING.set_function(_pending_in_process)


@dataclass
class _Entry:
    key: str
    local_path: str
    attempts: int
    generation: int
    due_s: float


class UploadQueue:
    """Copy local files to S3 in a background thread; nothing is lost while S3 is down.

    :meth:`submit` writes a spool marker (a small JSON file in ``spool_dir`` naming the
    local file and the key) and returns at once. The worker uploads due files one by one;
    a failed upload is retried after ``min(backoff_max_s, backoff_base_s * 2**(attempts-1))``
    seconds times a random factor in [0.5, 1] ("exponential backoff with jitter", AWS
    Architecture Blog, 2015), without limit on attempts. After a success, every waiting
    file is made due at once (S3 answers again). A marker is removed only after its
    upload succeeded; markers found in ``spool_dir`` at start are uploaded again, so a
    restart loses nothing either. Submitting the same key again replaces the pending upload.

    Parameters
    ----------
    client : botocore S3 client
    bucket : str
    spool_dir : path
        Directory of the spool markers; created if missing.
    backoff_base_s, backoff_max_s : float
        First retry delay and the cap of the delay, seconds.
    start : bool
        Start the worker thread now (False: call :meth:`start` later).
    on_uploaded : callable, optional
        ``on_uploaded(key)`` after each successful upload (from the worker thread).
    """

    def __init__(
        self,
        client,
        bucket: str,
        spool_dir: str | Path,
        *,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        start: bool = True,
        on_uploaded: Callable[[str], None] | None = None,
        random_state: int | None = None,
    ):
        if backoff_base_s <= 0 or backoff_max_s < backoff_base_s:
            raise ValueError(f"need 0 < backoff_base_s <= backoff_max_s, got {backoff_base_s}, {backoff_max_s}")
        self.client = client
        self.bucket = bucket
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.on_uploaded = on_uploaded
        self._rng = random.Random(random_state)
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._generation = itertools.count(1)
        self._closed = False
        self.uploaded = 0
        self.failed_attempts = 0
        self._thread: threading.Thread | None = None
        self._recover()
        if start:
            self.start()

    # -- markers -----------------------------------------------------------------------
    def _marker_path(self, key: str) -> Path:
        return self.spool_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def _write_marker(self, entry: _Entry) -> None:
        path = self._marker_path(entry.key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": entry.key, "local_path": entry.local_path, "attempts": entry.attempts}))
        os.replace(tmp, path)

    def _recover(self) -> None:
        for path in sorted(self.spool_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                key, local_path = str(data["key"]), str(data["local_path"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("unreadable upload spool marker %s (%s); moved aside", path, exc)
                path.rename(path.with_suffix(".bad"))
                continue
            self._schedule(key, local_path, attempts=int(data.get("attempts", 0)), write=False)
        if self._entries:
            log.info("resuming %d S3 uploads from %s", len(self._entries), self.spool_dir)

    def _schedule(self, key: str, local_path: str, *, attempts: int = 0, write: bool = True) -> None:
        with self._cond:
            entry = _Entry(key, local_path, attempts, next(self._generation), time.monotonic())
            if write:
                self._write_marker(entry)
            self._entries[key] = entry
            heapq.heappush(self._heap, (entry.due_s, next(self._seq), key, entry.generation))
            self._cond.notify_all()

    # -- public ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closed = False
            _LIVE_QUEUES.add(self)
            self._thread = threading.Thread(target=self._run, name="s3-upload-queue", daemon=True)
            self._thread.start()

    def submit(self, local_path: str | Path, key: str) -> None:
        """Schedule ``local_path`` for upload to ``s3://<bucket>/<key>``; returns at once.

        Raises
        ------
        FileNotFoundError
            If ``local_path`` does not exist.
        ValueError
            If ``key`` is empty or starts with ``/``.
        """
        local_path = Path(local_path)
        if not local_path.is_file():
            raise FileNotFoundError(f"no file to upload at {local_path}")
        if not key or key.startswith("/"):
            raise ValueError(f"S3 key must be a non-empty relative key, got {key!r}")
        self._schedule(key, str(local_path.resolve()))

    @property
    def pending(self) -> int:
        """Number of files not yet in S3."""
        with self._cond:
            return len(self._entries)

    def pending_keys(self) -> list[str]:
        """Keys not yet in S3, sorted."""
        with self._cond:
            return sorted(self._entries)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is pending; return False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._entries:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (an upload in flight finishes); pending files stay spooled on disk."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    # -- worker ------------------------------------------------------------------------
    def _next_due(self) -> _Entry | None:
        """Pop the next due entry, waiting for it; None when closed. Caller holds the lock."""
        while not self._closed:
            while self._heap:
                due_s, _, key, generation = self._heap[0]
                entry = self._entries.get(key)
                if entry is None or entry.generation != generation or entry.due_s != due_s:
                    heapq.heappop(self._heap)  # stale: uploaded, replaced or rescheduled
                    continue
                break
            if not self._heap:
                self._cond.wait()
                continue
            wait_s = self._heap[0][0] - time.monotonic()
            if wait_s > 0:
                self._cond.wait(wait_s)
                continue
            heapq.heappop(self._heap)
            return self._entries[key]
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                entry = self._next_due()
                if entry is None:
                    return
            outcome = self._upload(entry)
            with self._cond:
                current = self._entries.get(entry.key)
                if outcome in ("ok", "missing"):
                    if current is not None and current.generation == entry.generation:
                        del self._entries[entry.key]
                        self._marker_path(entry.key).unlink(missing_ok=True)
                    if outcome == "ok":
                        self.uploaded += 1
                        now_s = time.monotonic()
                        for other in self._entries.values():  # S3 answers: retry the waiting ones now
                            if other.due_s > now_s:
                                other.due_s = now_s
                                heapq.heappush(self._heap, (now_s, next(self._seq), other.key, other.generation))
                elif current is not None and current.generation == entry.generation:
                    self.failed_attempts += 1
                    current.attempts += 1
                    delay_s = min(self.backoff_max_s, self.backoff_base_s * 2 ** (current.attempts - 1))
                    current.due_s = time.monotonic() + delay_s * self._rng.uniform(0.5, 1.0)
                    heapq.heappush(self._heap, (current.due_s, next(self._seq), current.key, current.generation))
                    try:
                        self._write_marker(current)
                    except OSError as exc:
                        log.error("cannot update spool marker of %s: %s", current.key, exc)
                self._cond.notify_all()
            if outcome == "ok" and self.on_uploaded is not None:
                try:
                    self.on_uploaded(entry.key)
                except Exception:
                    log.exception("on_uploaded callback failed for %s", entry.key)

    def _upload(self, entry: _Entry) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        start_s = time.perf_counter()
        try:
            with open(entry.local_path, "rb") as fh:
                body = fh.read()
        except FileNotFoundError:
            log.error("file of s3://%s/%s is gone from %s; cannot upload it", self.bucket, entry.key, entry.local_path)
            metrics.S3_UPLOADS.labels(outcome="missing").inc()
            return "missing"
        try:
            self.client.put_object(Bucket=self.bucket, Key=entry.key, Body=body)
        except (BotoCoreError, ClientError, OSError) as exc:
            metrics.S3_UPLOADS.labels(outcome="retry").inc()
            if entry.attempts == 0 or entry.attempts % 10 == 0:
                log.warning("upload of s3://%s/%s failed (%s, attempt %d); kept on disk, will retry",
                            self.bucket, entry.key, type(exc).__name__, entry.attempts + 1)
            return "retry"
        metrics.S3_UPLOADS.labels(outcome="ok").inc()
        metrics.observe_stage("upload", time.perf_counter() - start_s)
        return "ok"
