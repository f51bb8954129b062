"""HTTP in: what an image request must look like, checked before any image is decoded.

Two layers, both answering in the shape of errors.py:
- RequestGuard, an ASGI middleware, refuses a wrong content type (415) or a body over
  SERVICE_MAX_BODY_BYTES (413) before BentoML reads the body, for the POST routes it is given,
  each with the content types it accepts (the image forms here, v2 infer in v2_routes.py).
- The input specs (`input_specs(max_images)` makes ClassifyInput, FeaturesInput and ExplainInput for
  the configured limit) parse the multipart form themselves first, to refuse unknown fields, a
  missing `images` field, too many images, text where a file belongs (which BentoML would otherwise
  take for a URL to download) and a file where text belongs, then validate the values' types:
  pydantic's refusals (int_parsing, bool_parsing, literal_error, ...) become `invalid_field`, with
  pydantic's message.

The API functions get each image as the bytes of its file, read from the form in memory: a file's
name (the client's to choose) is never used for anything, and no file is written to disk for it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
import logging
from http import HTTPStatus
from pathlib import Path
from typing import Callable, ClassVar, Literal, Mapping

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import ConfigDict, Field, ValidationError
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import Reason, Rejection, quoted

log = logging.getLogger("bentoml.image_classifier")

MULTIPART = "multipart/form-data"
# Form fields besides the files: a few options, never many.
_MAX_FORM_FIELDS = 16


class ClientGone(BentoMLException):
    """The client disconnected before its request was read: nobody to answer. Logged here in one
    line; BentoML, which turns any other exception of a request's parsing into a 500 and a
    traceback, answers this one as a 400 that goes nowhere (service.py keeps its traceback out
    of the error log)."""

    def __init__(self, request: Request) -> None:
        super().__init__(f"client gone: {request.method} {request.url.path}", error_code=HTTPStatus.BAD_REQUEST)


def _form_limits_error(message: str, max_images: int) -> Rejection:
    if message.startswith("Too many files"):  # starlette's words when max_files is exceeded
        return Rejection(Reason.TOO_MANY_IMAGES, f"more than {max_images} images in one request", ("images",))
    return Rejection(Reason.MALFORMED_BODY, f"the multipart body cannot be parsed: {message}")


class ImagesInput(bentoml.IODescriptor):
    """The fields every image endpoint takes. Subclasses add their options; input_specs sets the limit."""

    model_config = ConfigDict(extra="forbid")
    max_images: ClassVar[int]

    # Declared as files (Path) for BentoML's OpenAPI page and multipart handling; from_http_request
    # gives the API the files' bytes.
    images: list[Path] = Field(description="One or more image files (JPEG, PNG, WebP, BMP; the first frame of a GIF), "
                                           "each a multipart part named `images`.")
    model: str = Field(default="", description="Model to use (GET /models lists them); empty: the default model.")

    @classmethod
    async def from_http_request(cls, request: Request, serde) -> "ImagesInput":
        title = f"POST {request.url.path}"
        try:
            form = await request.form(max_files=cls.max_images, max_fields=_MAX_FORM_FIELDS)
        except ClientDisconnect:
            client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
            log.warning("client gone: %s disconnected before sending the whole body of %s %s",
                        client, request.method, request.url.path)
            raise ClientGone(request) from None
        except (HTTPException, MultiPartException) as err:
            raise _form_limits_error(str(getattr(err, "detail", err)), cls.max_images).validation_error(title) from None
        except Exception as err:  # anything else the parser meets is in the client's bytes too
            raise Rejection(Reason.MALFORMED_BODY, f"the multipart body cannot be parsed: {type(err).__name__}: {err}"
                            ).validation_error(title) from None
        problem = cls._form_problem(form)
        if problem is not None:
            raise problem.validation_error(title)
        try:
            parsed = cls.model_validate({**cls._values(form), "images": []})
        except ValidationError as err:
            raise Rejection.validation_errors(title, [
                Rejection(Reason.INVALID_FIELD, error["msg"], error["loc"]) for error in err.errors(include_input=False)
            ]) from None
        # Unvalidated by design: the files' bytes, decoded and checked by service/imaging.py.
        parsed.images = [await upload.read() for upload in form.getlist("images")]
        return parsed

    @classmethod
    def _values(cls, form) -> dict:
        """The form's values for validation, read as BentoML's multipart parser reads them (each text
        value as JSON if it parses, as its client sends them, else as it is), except that a text
        field stays text: a label or model named "9" is the string "9", not the number 9."""
        values = {}
        for key in form:
            if key in cls.multipart_fields:
                continue  # files, checked by _form_problem, read by from_http_request
            text = form[key]
            try:
                values[key] = json.loads(text)
            except (ValueError, RecursionError):  # not JSON; or 5000 digits, or nested 100,000 deep
                values[key] = text
            if cls.model_fields[key].annotation is str and not isinstance(values[key], str):
                values[key] = text
        return values

    @classmethod
    def _form_problem(cls, form) -> Rejection | None:
        fields = list(cls.model_fields)
        unknown = sorted(set(form.keys()) - set(fields))
        if unknown:
            return Rejection(Reason.UNKNOWN_FIELD, f"unknown field {quoted(unknown[0])}; the fields are {', '.join(fields)}", (unknown[0],))
        images = form.getlist("images")
        if not images:
            return Rejection(Reason.MISSING_FIELD, "no images: send one or more files in the multipart field 'images'", ("images",))
        for index, value in enumerate(images):
            if not isinstance(value, UploadFile):
                return Rejection(Reason.INVALID_FIELD, "must be a file (a multipart part with a filename), not a text value",
                                 ("images", index))
        for key in form:
            if key in cls.multipart_fields:
                continue
            if any(isinstance(value, UploadFile) for value in form.getlist(key)):
                return Rejection(Reason.INVALID_FIELD, "must be a text value, not a file (a multipart part with a filename)", (key,))
            if len(form.getlist(key)) > 1:  # which one was meant? Not the last one silently
                return Rejection(Reason.INVALID_FIELD, f"given {len(form.getlist(key))} times; give it once", (key,))
        return None


class ClassifyInput(ImagesInput):
    top_k: int = Field(default=1, description="How many of the most probable labels to list per image (1 to the number of classes).")


class FeaturesInput(ImagesInput):
    normalize: bool = Field(default=False, description="Scale each embedding to unit L2 norm.")


class ExplainInput(ImagesInput):
    label: str = Field(default="", description="The class whose evidence the heatmap shows; empty: the predicted class.")
    format: Literal["", "json", "png"] = Field(
        default="", description="png: the overlay alone, as image/png; json: the probabilities and the overlay (base64 PNG); "
                                "empty: png if the Accept header asks for image/png, else json.")


def input_specs(max_images: int) -> tuple[type[ClassifyInput], type[FeaturesInput], type[ExplainInput]]:
    """The input specs of /classify, /features and /explain, taking at most `max_images` files."""
    return tuple(type(spec.__name__, (spec,), {"max_images": max_images, "__module__": __name__})
                 for spec in (ClassifyInput, FeaturesInput, ExplainInput))


@dataclass(frozen=True)
class Accepts:
    """The content types a route takes ("": none given), and how its refusal says what it expects."""

    media_types: tuple[str, ...]
    expected: str


IMAGE_FORM = Accepts((MULTIPART,), f"{MULTIPART} with image files in the field 'images'")


class RequestGuard:
    """ASGI middleware: content type and body size of POSTs to the given routes, checked up front.

    `routes`: path (a regular expression the whole path matches) -> what it accepts. `shed`: the
    refusal (503) to answer at once, before the body is read or parsed, while the worker is
    overloaded (None when it is not): under overload, refusing is what a worker spends its time on,
    and a refusal that parses nothing costs the least."""

    def __init__(self, app: ASGIApp, *, routes: Mapping[str, Accepts], max_body_bytes: int,
                 shed: Callable[[], Rejection | None] = lambda: None) -> None:
        self.app = app
        self.routes = [(re.compile(path), accepts) for path, accepts in routes.items()]
        self.max_body_bytes = max_body_bytes
        self.shed = shed

    def _accepts(self, path: str) -> Accepts | None:
        return next((accepts for pattern, accepts in self.routes if pattern.fullmatch(path)), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepts = self._accepts(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if accepts is None:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        content_type = headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() not in accepts.media_types:
            rejection = Rejection(Reason.WRONG_CONTENT_TYPE, f"expected {accepts.expected}, got {content_type or 'no content type'}")
            return await rejection.response()(scope, receive, send)
        if (overloaded := self.shed()) is not None:
            return await overloaded.response()(scope, receive, send)
        length = headers.get("content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_body_bytes:
                return await self._too_large(int(length))(scope, receive, send)
            return await self.app(scope, receive, send)
        # A chunked body of unknown length: read it (up to the limit) before BentoML does.
        messages, size = await self._read_body(receive)
        if size > self.max_body_bytes:
            return await self._too_large(size)(scope, receive, send)
        return await self.app(scope, self._replay(messages, receive), send)

    def _too_large(self, size: int):
        return Rejection(Reason.BODY_TOO_LARGE,
                         f"the request body has {size} bytes, more than the limit of {self.max_body_bytes}").response()

    async def _read_body(self, receive: Receive) -> tuple[list[Message], int]:
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body") or size > self.max_body_bytes:
                return messages, size

    @staticmethod
    def _replay(messages: list[Message], receive: Receive) -> Receive:
        pending = list(messages)

        async def replayed() -> Message:
            return pending.pop(0) if pending else await receive()

        return replayed
