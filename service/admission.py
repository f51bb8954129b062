"""Load the service can refuse: a budget of the pixels a worker holds for the requests in flight.

Every other limit bounds one request (its body, its images, each image's pixels); this one bounds
what all of them hold at once, which is what exhausts memory under load: decoded pictures
(docs/reliability.md measures their peak per megapixel) and the model inputs
waiting in the batching queue. A request is admitted when its cost fits in what is left of the
budget, and holds it until it is answered; one that does not fit is refused at once with 503
`overloaded` and Retry-After, before anything is decoded, rather than queued: a queue of
requests waiting for memory is memory too.

A request's cost (`cost`): the pixels of the pictures it can hold decoded at once (its images
are decoded in parallel, as many at a time as the worker's decoding threads, and each picture
is dropped once resized: the largest that many) plus the model input's pixels for each image
(the resized inputs are all held until the batch is answered). Image sizes come from the files'
headers (`imaging.image_size`), which are read without decoding. A request alone is always
admitted, whatever its cost: the per-request limits bound it, and refusing it would refuse it
forever.

One Budget per worker process (SERVICE_MAX_INFLIGHT_PIXELS each); its state is a counter under a
lock, so that it holds whether requests are admitted from the event loop or from threads.
"""

from __future__ import annotations

import threading
import time
from typing import Iterable

from .errors import Reason, Rejection


def cost(image_pixels: Iterable[int], input_pixels: int, at_once: int = 1, tensors: int = 0) -> int:
    """The pixels a request holds at its peak: its `at_once` largest pictures, decoded together, and
    the model input of each image (and of each of `tensors` inputs sent as pixels)."""
    if at_once < 1:
        raise ValueError(f"pictures are decoded at least one at a time, not {at_once}")
    sizes = sorted(image_pixels, reverse=True)
    return sum(sizes[:at_once]) + (len(sizes) + tensors) * input_pixels


class Budget:
    """At most `capacity` pixels admitted at once; `admit(n)` holds n of them for a `with` (or
    `async with`) block, or raises the 503 Rejection."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a budget needs a capacity of at least 1, not {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self.admitted = 0  # requests holding part of the budget now
        self._lock = threading.Lock()

    def admit(self, pixels: int) -> "_Admission":
        return _Admission(self, max(0, int(pixels)))

    def _take(self, pixels: int) -> None:
        with self._lock:
            if self.admitted and self.in_use + pixels > self.capacity:
                raise Rejection(Reason.OVERLOADED,
                                f"the service holds {self.in_use} of its {self.capacity} pixels for requests in flight; "
                                f"this one needs {pixels}: retry later")
            self.in_use += pixels
            self.admitted += 1

    def _give_back(self, pixels: int) -> None:
        with self._lock:
            self.in_use -= pixels
            self.admitted -= 1


class _Admission:
    """What `Budget.admit` returns: entering takes the pixels or raises, leaving gives them back."""

    def __init__(self, budget: Budget, pixels: int) -> None:
        self.budget = budget
        self.pixels = pixels

    def __enter__(self) -> "_Admission":
        self.budget._take(self.pixels)
        return self

    def __exit__(self, *exc_info) -> None:
        self.budget._give_back(self.pixels)

    async def __aenter__(self) -> "_Admission":
        return self.__enter__()

    async def __aexit__(self, *exc_info) -> None:
        self.__exit__()


class DecodeQueue:
    """The images waiting for a worker's decoding threads, refused at arrival when they would wait
    longer than `max_wait_s`.

    Under overload the decoding threads' queue is where requests pile up (the batching queue after
    it bounds its own wait): first in, first out, with no bound every request waits longer and
    longer, and shedding those that waited too long would shed nearly all of them, each having
    waited the whole time. So a request is refused when it arrives, at no cost, if the images ahead
    of it and its own, at the mean decoding time measured so far (wall time, contention included),
    would keep the threads busy past `max_wait_s`; one that got in but still waited longer (the
    estimate was low) is refused when its turn comes, before it is decoded."""

    def __init__(self, threads: int, max_wait_s: float, smoothing: float = 0.1) -> None:
        self.threads = threads
        self.max_wait_s = max_wait_s
        self.smoothing = smoothing
        self.waiting = 0
        self.mean_s: float | None = None  # decoding seconds per image, moving average
        self.wait_s = 0.0  # how long the images that started lately had waited, moving average
        self._lock = threading.Lock()

    def predicted_wait_s(self, images: int) -> float:
        return 0.0 if self.mean_s is None else (self.waiting + images) * self.mean_s / self.threads

    def overloaded(self, images: int = 1) -> Rejection | None:
        """The refusal for a request of `images` arriving now, or None if it would get in: refused
        when the images ahead would take longer than max_wait_s at the mean decoding time, or when
        some are waiting and those that started lately had waited more than half of it (the threads
        are not keeping up, an empty queue resets it,
        whatever the estimate says: under a flood of requests the event loop, parsing them, leaves
        the decoding threads little of the GIL)."""
        wait = self.predicted_wait_s(images)
        if wait <= self.max_wait_s and (self.waiting == 0 or self.wait_s <= self.max_wait_s / 2):
            return None
        return Rejection(Reason.OVERLOADED, f"{self.waiting} images are waiting to be decoded (about "
                                            f"{max(wait, self.wait_s):.1f} s; SERVICE_MAX_LATENCY_MS allows "
                                            f"{self.max_wait_s:g} s): retry later")

    def enter(self, images: int) -> "Ticket":
        with self._lock:
            if (refusal := self.overloaded(images)) is not None:
                raise refusal
            self.waiting += images
        return Ticket(self, images)

    def _started(self, waited_s: float) -> None:
        with self._lock:
            self.waiting -= 1
            self.wait_s = 0.0 if self.waiting == 0 else self.wait_s + self.smoothing * (waited_s - self.wait_s)

    def _decoded(self, seconds: float) -> None:
        with self._lock:
            self.mean_s = seconds if self.mean_s is None else self.mean_s + self.smoothing * (seconds - self.mean_s)

    def _left(self, images: int) -> None:
        with self._lock:
            self.waiting -= images
            if self.waiting == 0:
                self.wait_s = 0.0


class Ticket:
    """A request's place in the DecodeQueue: `start()` in the decoding thread as each image's turn
    comes (or the 503 if it waited too long), `decoded(seconds)` after; leaving the `with` gives back
    the places of images never started (a refusal or a client gone)."""

    def __init__(self, queue: DecodeQueue, images: int) -> None:
        self.queue = queue
        self.unstarted = images
        self.entered = time.perf_counter()
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self.unstarted -= 1
        waited = time.perf_counter() - self.entered
        self.queue._started(waited)
        if waited > self.queue.max_wait_s:
            raise Rejection(Reason.OVERLOADED, f"waited {waited:.1f} s for a decoding thread, more than the "
                                               f"{self.queue.max_wait_s:g} s of SERVICE_MAX_LATENCY_MS: retry later")

    def decoded(self, seconds: float) -> None:
        self.queue._decoded(seconds)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            left, self.unstarted = self.unstarted, 0
        if left:
            self.queue._left(left)
