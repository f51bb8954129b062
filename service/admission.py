"""Load the service can refuse: a budget of the pixels a worker holds for the requests in flight.

Every other limit bounds one request (its body, its images, each image's pixels); this one bounds
what all of them hold at once, which is what exhausts memory under load: decoded pictures
(measured at 3-17 MiB per megapixel at their peak, docs/reliability.md) and the model inputs
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
