"""Load the service can refuse: a budget of the pixels a worker holds for the requests in flight.

Every other limit bounds one request (its body, its images, each image's pixels); this one bounds
what all of them hold at once, which is what exhausts memory under load: decoded pictures
(measured at 3-17 MiB per megapixel at their peak, docs/reliability.md) and the model inputs
waiting in the batching queue. A request is admitted when its cost fits in what is left of the
budget, and holds it until it is answered; one that does not fit is refused at once with 503
`overloaded` and Retry-After, before anything is decoded, rather than queued: a queue of
requests waiting for memory is memory too.

A request's cost (`cost`): the pixels of its largest image (its images are decoded one at a
time, and each picture is dropped once resized) plus the model input's pixels for each image
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


def cost(image_pixels: Iterable[int], input_pixels: int) -> int:
    """The pixels a request holds at its peak: its largest picture, decoded, and every image's model input."""
    sizes = list(image_pixels)
    return (max(sizes) if sizes else 0) + len(sizes) * input_pixels


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
