"""Why a request is refused, and the one shape every refusal has.

Every 4xx answer is JSON: {"error": "<one line>", "detail": [{"type": <reason>, "loc": [...], "msg": ...}]},
the shape BentoML gives its own validation errors (which this service raises for problems found
while the request is parsed). `type` is always one of Reason's values: a value of the wrong type,
which pydantic finds, is `invalid_field` with pydantic's message. Each refusal is counted once in
imgcls_rejected_requests_total{reason}.
"""

from __future__ import annotations

from enum import Enum
from typing import Sequence

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.responses import JSONResponse

from . import metrics


class Reason(str, Enum):
    """The fixed set of reasons a request is refused (the metric's label values)."""

    WRONG_CONTENT_TYPE = "wrong_content_type"
    BODY_TOO_LARGE = "body_too_large"
    MALFORMED_BODY = "malformed_body"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_FIELD = "invalid_field"
    TOO_MANY_IMAGES = "too_many_images"
    UNKNOWN_MODEL = "unknown_model"
    TOP_K_OUT_OF_RANGE = "top_k_out_of_range"
    UNKNOWN_LABEL = "unknown_label"
    CANNOT_EXPLAIN = "cannot_explain"
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT_IMAGE = "corrupt_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"


STATUS = {
    Reason.WRONG_CONTENT_TYPE: 415,
    Reason.UNSUPPORTED_FORMAT: 415,
    Reason.BODY_TOO_LARGE: 413,
    Reason.TOO_MANY_PIXELS: 413,
    Reason.OVERLOADED: 503,
    Reason.UNAVAILABLE: 503,
}
# Seconds a client should wait before retrying a 503: a full batching queue drains within a
# second; a worker still loading its models first loads and warms them.
RETRY_AFTER = {Reason.OVERLOADED: "1", Reason.UNAVAILABLE: "5"}


class Rejection(Exception):
    """A request the service refuses, with the reason, a one-line message and where the problem is."""

    def __init__(self, reason: Reason, message: str, loc: Sequence[str | int] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.loc = tuple(loc)

    @property
    def status(self) -> int:
        return STATUS.get(self.reason, 400)

    def at(self, *loc: str | int) -> "Rejection":
        """The same rejection, located (e.g. at ("images", 2))."""
        return Rejection(self.reason, self.message, loc)

    def _where(self) -> str:
        if not self.loc:
            return ""
        head, *rest = self.loc
        return f"{head}{''.join(f'[{part}]' for part in rest)}: "

    def response(self) -> JSONResponse:
        """The HTTP answer (counted)."""
        metrics.REJECTED.labels(reason=self.reason.value).inc()
        detail = {"type": self.reason.value, "loc": list(self.loc), "msg": self.message}
        headers = {"Retry-After": RETRY_AFTER[self.reason]} if self.reason in RETRY_AFTER else None
        return JSONResponse({"error": self._where() + self.message, "detail": [detail]}, status_code=self.status, headers=headers)

    def validation_error(self, title: str) -> ValidationError:
        """The same refusal as a pydantic ValidationError (counted), for code that BentoML runs
        before the API function, where only ValidationError becomes a 400 with this body."""
        return Rejection.validation_errors(title, [self])

    @staticmethod
    def validation_errors(title: str, rejections: Sequence["Rejection"]) -> ValidationError:
        """Several refusals of one request (all 400s) as one ValidationError, counted once, by the first's reason."""
        metrics.REJECTED.labels(reason=rejections[0].reason.value).inc()
        errors = [InitErrorDetails(type=PydanticCustomError(r.reason.value, r.message.replace("{", "(").replace("}", ")")),
                                   loc=r.loc, input=None) for r in rejections]
        return ValidationError.from_exception_data(title, errors)
