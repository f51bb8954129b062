"""The Open Inference Protocol (KServe v2, REST), as pure functions: what goes in, what comes out.

What a model looks like to a v2 client (model_metadata):
  inputs   image_bytes  BYTES [-1]            encoded image files, decoded as /classify decodes them
           image        FP32 [-1, H, W, C]    the model's own input, pixels 0-255 (UINT8 accepted too)
  outputs  probabilities FP32 [-1, K]         K: the model's classes
           features      FP32 [-1, D]         the model's embedding (/features)
A request sends one of the two inputs. Extensions (server_metadata):
- binary_tensor_data: a tensor's data may follow the JSON header in the body (the header's length
  in Inference-Header-Content-Length, each input's size in parameters.binary_data_size; BYTES
  elements as a 4-byte little-endian length and the bytes); outputs come back so with
  `binary_data` on a requested output or `binary_data_output` in the request's parameters.
- classification: `"parameters": {"classification": k}` on a requested output answers, per image,
  the k highest values as BYTES "value:index:label", value as C++'s std::to_string (printf "%f")
  writes it: Triton's format (its src/classification.cc). A k above the classes gives them all.
Also (MLServer's convention): a JSON BYTES input with `"parameters": {"content_type": "base64"}`
holds base64 strings, so that a file can be sent in plain JSON (curl).

Refusals are errors.Rejection with the service's reasons; their JSON body has the protocol's
"error" string (and the service's "detail"). service/v2_routes.py puts this on HTTP.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .errors import Reason, Rejection
from .registry import ModelPackage

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
EXTENSIONS = ("binary_tensor_data", "classification")
PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX Runtime model
IMAGE_BYTES, IMAGE = "image_bytes", "image"
PROBABILITIES, FEATURES = "probabilities", "features"
OUTPUTS = (PROBABILITIES, FEATURES)
# The raw tensor's datatypes, as numpy reads their binary form (little-endian, as the protocol says).
PIXEL_DTYPES = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4")}


class ModelNotFound(Rejection):
    """A model or version the store does not hold: 404, as KServe's own servers answer it."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.UNKNOWN_MODEL, message)

    @property
    def status(self) -> int:
        return 404


# --- what the model is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    height: int
    width: int
    channels: int
    classes: tuple[str, ...]
    feature_dim: int  # -1 where the manifest does not say

    @classmethod
    def of(cls, package: ModelPackage) -> "ModelSpec":
        shape = ((package.manifest.get("outputs") or {}).get(FEATURES) or {}).get("shape") or [None, None]
        dim = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else -1
        spec = package.input
        return cls(package.name, package.version, spec.height, spec.width, spec.channels, package.classes, dim)

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def server_metadata(version: str) -> dict:
    return {"name": "convnet-serving", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(spec: ModelSpec) -> dict:
    def tensor(name: str, datatype: str, shape: Sequence[int]) -> dict:
        return {"name": name, "datatype": datatype, "shape": list(shape)}

    return {
        "name": spec.name,
        "versions": [spec.version],
        "platform": PLATFORM,
        "inputs": [tensor(IMAGE_BYTES, "BYTES", [-1]), tensor(IMAGE, "FP32", [-1, *spec.pixel_shape])],
        "outputs": [tensor(PROBABILITIES, "FP32", [-1, len(spec.classes)]), tensor(FEATURES, "FP32", [-1, spec.feature_dim])],
    }


# --- the request -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """One request input as sent: JSON `data`, or its slice of the binary part (`binary`)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: Mapping
    data: object = None
    binary: bytes | None = None


@dataclass(frozen=True)
class Output:
    """A requested output: as binary data or JSON, and as classifications (k > 0) or the tensor."""

    name: str
    binary: bool | None = None  # None: as the request's binary_data_output says
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...] | None  # None: every output, with the request's defaults
    binary_output: bool


def _malformed(message: str, *loc: str | int) -> Rejection:
    return Rejection(Reason.MALFORMED_BODY, message, loc)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body of a request sent with Content-Encoding gzip or deflate (tritonclient's
    request_compression_algorithm), never more than `limit` bytes once inflated."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise Rejection(Reason.WRONG_CONTENT_TYPE, f"unsupported Content-Encoding {encoding!r} (gzip, deflate or none)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise _malformed(f"the {encoding} body cannot be inflated: {err}") from None
    if len(data) > limit:
        raise Rejection(Reason.BODY_TOO_LARGE, f"the request body inflates to more than the limit of {limit} bytes")
    return data


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """The inference request of an HTTP body: its JSON header, and the binary part after it when
    `header_length` (the Inference-Header-Content-Length header) says where the JSON ends."""
    if header_length is None:
        header, rest = body, b""
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise _malformed(f"{HEADER_LENGTH} must be the length of the JSON header, at most the body's "
                             f"{len(body)} bytes, not {header_length!r}")
        header, rest = body[: int(header_length)], body[int(header_length):]
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as err:
        hint = "" if header_length is not None else f" (binary data after it needs the {HEADER_LENGTH} header)"
        raise _malformed(f"the inference request is not JSON: {err}{hint}") from None
    if not isinstance(request, dict):
        raise _malformed("the inference request must be a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise Rejection(Reason.MISSING_FIELD, "no inputs: send image_bytes (BYTES) or image (UINT8 or FP32)", ("inputs",))
    parsed, offset = [], 0
    for index, item in enumerate(inputs):
        tensor, offset = _parse_input(item, index, rest, offset)
        parsed.append(tensor)
    if offset != len(rest):
        raise _malformed(f"the body has {len(rest) - offset} bytes after the inputs' binary data (binary_data_size)")
    parameters = _parameters(request, ("parameters",))
    identifier = request.get("id")
    if identifier is not None and not isinstance(identifier, str):
        raise Rejection(Reason.INVALID_FIELD, "must be a string", ("id",))
    return InferRequest(identifier, tuple(parsed), _parse_outputs(request.get("outputs")),
                        _flag(parameters, "binary_data_output", ("parameters", "binary_data_output")))


def _parameters(item: dict, loc: tuple) -> Mapping:
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise Rejection(Reason.INVALID_FIELD, "parameters must be a JSON object", loc)
    return parameters


def _flag(parameters: Mapping, key: str, loc: tuple) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise Rejection(Reason.INVALID_FIELD, f"{key} must be true or false", loc)
    return value


def _parse_input(item, index: int, rest: bytes, offset: int) -> tuple[Input, int]:
    loc = ("inputs", index)
    if not isinstance(item, dict):
        raise _malformed("each input must be a JSON object", *loc)
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise Rejection(Reason.MISSING_FIELD, "each input needs a name and a datatype (strings)", loc)
    loc = ("inputs", name)
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise Rejection(Reason.INVALID_FIELD, "shape must be a list of non-negative integers", loc)
    parameters = _parameters(item, loc)
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise Rejection(Reason.MISSING_FIELD, "no data: give `data`, or binary data with parameters.binary_data_size", loc)
        return Input(name, datatype, tuple(shape), parameters, data=item["data"]), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(rest):
        raise _malformed(f"binary_data_size {size!r} does not fit the {len(rest) - offset} bytes of binary data left "
                         "after the JSON header", *loc)
    if "data" in item:
        raise Rejection(Reason.INVALID_FIELD, "give either `data` or binary data (binary_data_size), not both", loc)
    return Input(name, datatype, tuple(shape), parameters, binary=rest[offset:offset + size]), offset + size


def _parse_outputs(outputs) -> tuple[Output, ...] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise Rejection(Reason.INVALID_FIELD, "outputs must be a list", ("outputs",))
    parsed = []
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise Rejection(Reason.MISSING_FIELD, "each requested output needs a name", ("outputs", index))
        loc = ("outputs", item["name"])
        if item["name"] not in OUTPUTS:
            raise Rejection(Reason.UNKNOWN_FIELD, f"unknown output {item['name']!r}; the outputs are {', '.join(OUTPUTS)}", loc)
        parameters = _parameters(item, loc)
        k = parameters.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool):
            raise Rejection(Reason.INVALID_FIELD, "classification must be an integer (how many classes)", loc)
        if "classification" in parameters and k < 1:
            raise Rejection(Reason.TOP_K_OUT_OF_RANGE, f"classification must be at least 1, not {k}", loc)
        binary = _flag(parameters, "binary_data", loc) if "binary_data" in parameters else None
        parsed.append(Output(item["name"], binary, k))
    if len({output.name for output in parsed}) != len(parsed):
        raise Rejection(Reason.INVALID_FIELD, "an output is requested more than once", ("outputs",))
    return tuple(parsed)


# --- the request against the model ----------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    """What a valid request asks the model for: encoded files to decode (`files`) or the pixels
    themselves (`pixels`, float32 [N, H, W, C] 0-255), and the outputs to answer."""

    outputs: tuple[Output, ...]
    files: tuple[bytes, ...] = ()
    pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files) if self.pixels is None else len(self.pixels)


def images(request: InferRequest, spec: ModelSpec, *, max_images: int) -> Images:
    """The request's images and outputs, checked against the model, or the Rejection saying what is wrong."""
    by_name: dict[str, Input] = {}
    for tensor in request.inputs:
        if tensor.name not in (IMAGE_BYTES, IMAGE):
            raise Rejection(Reason.UNKNOWN_FIELD, f"unknown input {tensor.name!r}; the inputs are {IMAGE_BYTES} "
                                                  f"(BYTES [-1]) or {IMAGE} (UINT8 or FP32 {_shape_text(spec)})",
                            ("inputs", tensor.name))
        if tensor.name in by_name:
            raise Rejection(Reason.INVALID_FIELD, "sent more than once", ("inputs", tensor.name))
        by_name[tensor.name] = tensor
    if len(by_name) > 1:
        raise Rejection(Reason.INVALID_FIELD, f"send either {IMAGE_BYTES} or {IMAGE}, not both", ("inputs",))
    outputs = tuple(Output(o.name, request.binary_output if o.binary is None else o.binary, o.classification)
                    for o in (request.outputs if request.outputs is not None else [Output(name) for name in OUTPUTS]))
    tensor = next(iter(by_name.values()))
    count = tensor.shape[0] if tensor.shape else 0
    if count > max_images:
        raise Rejection(Reason.TOO_MANY_IMAGES, f"more than {max_images} images in one request", ("inputs", tensor.name))
    if tensor.name == IMAGE_BYTES:
        return Images(outputs, files=_files(tensor))
    return Images(outputs, pixels=_pixels(tensor, spec))


def _shape_text(spec: ModelSpec) -> str:
    return "[-1, " + ", ".join(map(str, spec.pixel_shape)) + "]"


def _files(tensor: Input) -> tuple[bytes, ...]:
    loc = ("inputs", IMAGE_BYTES)
    if tensor.datatype != "BYTES":
        raise Rejection(Reason.INVALID_FIELD, f"datatype must be BYTES (encoded image files), not {tensor.datatype}", loc)
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise Rejection(Reason.INVALID_FIELD, f"shape must be [n], n >= 1 files, not {list(tensor.shape)}", loc)
    if tensor.binary is not None:
        files = deserialize_bytes(tensor.binary, loc)
    else:
        files = _json_bytes(tensor.data, tensor.parameters.get("content_type"), loc)
    if len(files) != tensor.shape[0]:
        raise Rejection(Reason.INVALID_FIELD, f"shape {list(tensor.shape)} but {len(files)} elements", loc)
    return files


def deserialize_bytes(data: bytes, loc: tuple = ()) -> tuple[bytes, ...]:
    """BYTES elements in the binary tensor extension's form: each a 4-byte little-endian length, then the bytes."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise _malformed("BYTES binary data ends inside an element's 4-byte length", *loc)
        (length,) = struct.unpack_from("<I", data, offset)
        if offset + 4 + length > len(data):
            raise _malformed(f"a BYTES element of {length} bytes runs past the end of its binary data", *loc)
        elements.append(data[offset + 4:offset + 4 + length])
        offset += 4 + length
    return tuple(elements)


def serialize_bytes(elements) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def _json_bytes(data, content_type, loc: tuple) -> tuple[bytes, ...]:
    if content_type not in (None, "base64", "str"):
        raise Rejection(Reason.INVALID_FIELD, f"content_type must be base64 or str, not {content_type!r}", loc)
    flat = _flatten(data)
    if not all(isinstance(element, str) for element in flat):
        raise Rejection(Reason.INVALID_FIELD, "BYTES data in JSON must be strings (base64 with "
                                              "\"parameters\": {\"content_type\": \"base64\"})", loc)
    if content_type != "base64":
        return tuple(element.encode() for element in flat)
    try:
        return tuple(base64.b64decode(element, validate=True) for element in flat)
    except binascii.Error as err:
        raise Rejection(Reason.INVALID_FIELD, f"not base64: {err}", loc) from None


def _flatten(data) -> list:
    if not isinstance(data, list):
        return [data]
    flat: list = []
    for element in data:
        flat.extend(_flatten(element) if isinstance(element, list) else [element])
    return flat


def _pixels(tensor: Input, spec: ModelSpec) -> np.ndarray:
    loc = ("inputs", IMAGE)
    if tensor.datatype not in PIXEL_DTYPES:
        raise Rejection(Reason.INVALID_FIELD, f"datatype must be UINT8 or FP32, not {tensor.datatype}", loc)
    if len(tensor.shape) != 4 or tensor.shape[1:] != spec.pixel_shape or tensor.shape[0] < 1:
        raise Rejection(Reason.INVALID_FIELD, f"shape must be {_shape_text(spec)} (n >= 1 images of model {spec.name}), "
                                              f"not {list(tensor.shape)}", loc)
    dtype, count = PIXEL_DTYPES[tensor.datatype], math.prod(tensor.shape)
    if tensor.binary is not None:
        if len(tensor.binary) != count * dtype.itemsize:
            raise Rejection(Reason.INVALID_FIELD, f"shape {list(tensor.shape)} of {tensor.datatype} is {count * dtype.itemsize} "
                                                  f"bytes, but binary_data_size is {len(tensor.binary)}", loc)
        values = np.frombuffer(tensor.binary, dtype)
    else:
        values = _json_numbers(tensor.data, integers=tensor.datatype == "UINT8", loc=loc)
        if values.size != count:
            raise Rejection(Reason.INVALID_FIELD, f"shape {list(tensor.shape)} but {values.size} elements", loc)
    if not (np.all(np.isfinite(values)) and values.min() >= 0 and values.max() <= 255):
        raise Rejection(Reason.INVALID_FIELD, "pixel values must lie within 0-255", loc)
    return values.astype(np.float32).reshape(tensor.shape)


def _json_numbers(data, *, integers: bool, loc: tuple) -> np.ndarray:
    flat = _flatten(data)
    kinds = (int,) if integers else (int, float)
    if not all(isinstance(value, kinds) and not isinstance(value, bool) for value in flat):
        raise Rejection(Reason.INVALID_FIELD, f"data must be {'integers' if integers else 'numbers'}", loc)
    return np.asarray(flat, dtype=np.float64)


# --- the response ----------------------------------------------------------------------------------


def classifications(probabilities: np.ndarray, k: int, classes: Sequence[str]) -> np.ndarray:
    """[N, min(k, K)] BYTES "value:index:label", highest first (ties: lower index first)."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return np.array([[f"{float(row[i]):f}:{i}:{classes[i]}".encode() for i in ranked] for row, ranked in zip(probabilities, order)],
                    dtype=object).reshape(len(probabilities), k)


def response(spec: ModelSpec, request_id: str | None, outputs: Sequence[Output],
             arrays: Mapping[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The inference response's body, and the length of its JSON header when binary data follows
    it (the Inference-Header-Content-Length to send), else None: the body is JSON alone."""
    tensors, chunks = [], []
    for output in outputs:
        array = arrays[output.name]
        if output.classification:
            array = classifications(array, output.classification, spec.classes)
        datatype = "BYTES" if array.dtype == object else "FP32"
        tensor = {"name": output.name, "datatype": datatype, "shape": list(array.shape)}
        if output.binary:
            chunk = serialize_bytes(array.ravel()) if datatype == "BYTES" else array.astype("<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = [e.decode() for e in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
        tensors.append(tensor)
    body = {"model_name": spec.name, "model_version": spec.version, "outputs": tensors}
    if request_id is not None:
        body = {"id": request_id, **body}
    header = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
