"""Graceful shutdown: on SIGTERM a worker answers what it holds, then exits, within a grace period.

uvicorn, BentoML's HTTP server, already drains on SIGTERM: it stops accepting connections, closes
the idle keep-alive ones, waits until every request in flight has been answered, then exits (the
batching queues and ONNX Runtime live in the same worker, so nothing they need leaves first). It
would wait for ever. `drain_within(seconds)` bounds it: the first SIGTERM also starts a timer, and
a worker still draining when it runs out logs so and sends itself SIGINT, uvicorn's second signal,
which makes it stop waiting. SERVICE_SHUTDOWN_GRACE_S defaults below Kubernetes' 30 s, so a pod
is never killed mid-answer by its kubelet before the service has given up on its own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("bentoml.image_classifier")


def drain_within(seconds: float) -> None:
    """Wrap this process's SIGTERM handler (uvicorn's, installed before the service starts) with the
    grace-period timer. Call it from the main thread, once the HTTP server is running."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):  # not under uvicorn (e.g. imported by a tool): nothing drains
        return
    timer: list[threading.Timer] = []

    def on_sigterm(signum, frame) -> None:
        if not timer:
            log.info("SIGTERM: answering the requests in flight, at most %g s more", seconds)
            timer.append(threading.Timer(seconds, _give_up, (seconds,)))
            timer[0].daemon = True
            timer[0].start()
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def _give_up(seconds: float) -> None:
    log.warning("SIGTERM: requests still in flight after the %g s grace period (SERVICE_SHUTDOWN_GRACE_S); exiting", seconds)
    os.kill(os.getpid(), signal.SIGINT)
