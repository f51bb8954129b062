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
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"


STATUS = {
    Reason.NOT_FOUND: 404,
    Reason.METHOD_NOT_ALLOWED: 405,
    Reason.UNAUTHORIZED: 401,
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
HEADERS = {Reason.UNAUTHORIZED: {"WWW-Authenticate": "Bearer"}}


# The most characters of what a client sent that an answer quotes back (a 1 MB `model` value
# must not come back as a 1 MB error), and the longest message any refusal has.
QUOTE_LIMIT = 100
MESSAGE_LIMIT = 1000


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`value` (client input) as an error message quotes it: repr'd, at most `limit` characters of
    it, the rest counted: 'aaaa...' (1048576 characters)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def clipped(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message on one line of at most `limit` characters (for words of others: pydantic's,
    starlette's, Pillow's, which may quote what the client sent)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class Rejection(Exception):
    """A request the service refuses, with the reason, a one-line message and where the problem is.

    Every message and location is clipped here, whoever wrote it: no refusal echoes more than a
    bounded part of a request."""

    def __init__(self, reason: Reason, message: str, loc: Sequence[str | int] = ()) -> None:
        message = clipped(message)
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.loc = tuple(part if isinstance(part, int) else clipped(str(part), QUOTE_LIMIT) for part in loc)

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
        headers = dict(HEADERS.get(self.reason, {}))
        if self.reason in RETRY_AFTER:
            headers["Retry-After"] = RETRY_AFTER[self.reason]
        return JSONResponse({"error": self._where() + self.message, "detail": [detail]}, status_code=self.status,
                            headers=headers or None)

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
