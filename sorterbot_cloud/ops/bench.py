"""Micro-benchmarks of the operations layer: ``sorterbot-cloud bench ops``.

Prints medians over repeated runs and ratios against a reference measured in the same
process, so the figures carry across machines:

1. request overhead: a minimal Flask route with :func:`sorterbot_cloud.ops.init_app`
   (request id, auth, metrics, JSON access log to a null stream) vs the bare route;
2. upload off the request path: :meth:`UploadQueue.submit` (what a request waits for)
   vs a synchronous ``put_object`` of the same 200 kB frame to moto's S3 server;
3. control-panel shipping with a dead control panel: a shipped log call vs a log call
   with no control panel configured.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path


def _median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def bench_requests(repeats: int = 2000) -> dict:
    """Median µs per ``GET /ping`` through Flask's test client, with and without ops."""
    from flask import Flask

    from sorterbot_cloud import ops
    from sorterbot_cloud.config import Settings
    from sorterbot_cloud.ops.logs import configure_logging

    def app_with(ops_on: bool) -> Flask:
        app = Flask("bench")
        if ops_on:
            ops.init_app(app, Settings(api_token="t"), configure_logs=False)
        app.add_url_rule("/ping", "ping", lambda: "ok")
        return app

    handler = configure_logging(True, stream=io.StringIO())
    try:
        bare = app_with(False).test_client()
        full = app_with(True).test_client()
        headers = {"Authorization": "Bearer t"}
        for client in (bare, full):  # warm up
            for _ in range(50):
                client.get("/ping", headers=headers)
        bare_us = _median_us(lambda: bare.get("/ping", headers=headers), repeats)
        full_us = _median_us(lambda: full.get("/ping", headers=headers), repeats)
    finally:
        logging.getLogger().removeHandler(handler)
    return {"bare_us": bare_us, "ops_us": full_us, "overhead_us": full_us - bare_us, "ratio": full_us / bare_us}


def bench_uploads(repeats: int = 50, size_bytes: int = 200_000) -> dict:
    """Median µs of ``submit`` vs a synchronous ``put_object`` to moto's server (same frame)."""
    from moto.server import ThreadedMotoServer

    from sorterbot_cloud.config import Settings
    from sorterbot_cloud.ops.aws import UploadQueue, make_client

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "bench")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        s3 = make_client("s3", Settings(deploy_region="eu-central-1", aws_endpoint_url=url))
        s3.create_bucket(Bucket="bench", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
        data = os.urandom(size_bytes)
        with tempfile.TemporaryDirectory() as tmp:
            frame = Path(tmp) / "1200.jpg"
            frame.write_bytes(data)
            counter = iter(range(10**9))
            put_us = _median_us(lambda: s3.put_object(Bucket="bench", Key=f"sync/{next(counter)}.jpg", Body=data), repeats)
            queue = UploadQueue(s3, "bench", Path(tmp) / "spool")
            submit_us = _median_us(lambda: queue.submit(frame, f"queued/{next(counter)}.jpg"), repeats)
            start = time.perf_counter()
            assert queue.flush(120), "uploads did not finish"
            drain_s = time.perf_counter() - start
            queue.close()
    finally:
        server.stop()
    return {"put_object_us": put_us, "submit_us": submit_us, "ratio": submit_us / put_us, "drain_s": drain_s}


def bench_control_panel(repeats: int = 5000) -> dict:
    """Median µs of a log call shipped to a dead control panel vs one with no shipper."""
    from sorterbot_cloud.ops.control_panel import ControlPanelHandler, ControlPanelShipper

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    logger = logging.getLogger("sorterbot_cloud.bench.cp")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    extra = {"arm_id": "ARM001", "session_id": "S1", "log_type": "bench", "duration_ms": 1.0}
    null = logging.NullHandler()
    logger.addHandler(null)
    plain_us = _median_us(lambda: logger.info("x", extra=extra), repeats)
    shipper = ControlPanelShipper(dead, queue_size=1000, timeout_s=1.0)
    handler = ControlPanelHandler(shipper)
    logger.addHandler(handler)
    shipped_us = _median_us(lambda: logger.info("x", extra=extra), repeats)
    logger.removeHandler(handler)
    logger.removeHandler(null)
    shipper.close(2.0)
    return {"plain_us": plain_us, "shipped_us": shipped_us, "ratio": shipped_us / plain_us,
            "dropped": shipper.dropped, "failed": shipper.failed}


def main() -> None:
    """Run the three benchmarks and print one line each."""
    r = bench_requests()
    print(f"request  bare {r['bare_us']:.0f} us, with ops {r['ops_us']:.0f} us: +{r['overhead_us']:.0f} us "
          f"(x{r['ratio']:.2f}) per request (median of 2000, Flask test client)")
    u = bench_uploads()
    print(f"upload   submit {u['submit_us']:.0f} us vs synchronous put_object {u['put_object_us']:.0f} us "
          f"(x{u['ratio']:.3f}) for a 200 kB frame; queue empty {u['drain_s']:.2f} s after the last submit")
    c = bench_control_panel()
    print(f"logging  shipped to a dead control panel {c['shipped_us']:.1f} us vs unshipped {c['plain_us']:.1f} us "
          f"(x{c['ratio']:.2f}); {c['dropped']} dropped (queue full), {c['failed']} failed POSTs")

