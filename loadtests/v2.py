"""KServe v2 inference requests with the binary tensor extension, as Triton Inference Server speaks
them: the request for N image files, and the tensors of the response.

A binary request is a JSON header followed by the tensors' raw bytes; the HTTP header
`Inference-Header-Content-Length` says where the JSON ends, and each binary input says its size in
`parameters.binary_data_size`. A BYTES tensor's elements are each a 4-byte little-endian length and
the bytes. Outputs asked for with `parameters.binary_data: true` come back the same way, in the
order the response's JSON lists them. Plain JSON responses (`data` lists) are read too.

`request_bodies` makes the load generator's bodies (loadtests/loadgen.py: encoded once before the
run, sent in turn); nothing here does any I/O, so that the same functions serve a test of any v2
endpoint, Triton's (loadtests/triton_peer.py) or the service's.
"""

from __future__ import annotations

import json
import struct
from typing import Mapping, Sequence

import numpy as np

from . import loadgen

HEADER_LENGTH = "Inference-Header-Content-Length"
CONTENT_TYPE = "application/octet-stream"
# v2 datatypes with a fixed-size element, as numpy dtypes (little-endian, as the extension sends them)
DTYPES = {"BOOL": "|b1", "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "|i1",
          "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


class V2Error(ValueError):
    """A v2 response that cannot be read, or an error answer; the message is one line."""


def encode_bytes(items: Sequence[bytes]) -> bytes:
    """A BYTES tensor's binary form: each element as its 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def decode_bytes(data: bytes | memoryview, count: int | None = None) -> list[bytes]:
    """The elements of a BYTES tensor's binary form (`count` of them, where given: checked)."""
    items, offset, data = [], 0, memoryview(data)
    while offset < len(data):
        if offset + 4 > len(data):
            raise V2Error("a BYTES tensor ends inside an element's length")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise V2Error("a BYTES tensor's element is longer than the data left")
        items.append(bytes(data[offset:offset + length]))
        offset += length
    if count is not None and len(items) != count:
        raise V2Error(f"a BYTES tensor of {count} elements holds {len(items)}")
    return items


def infer_request(files: Sequence[bytes], input_name: str, outputs: Sequence[str],
                  file_shape: Sequence[int] = (1,)) -> tuple[bytes, dict[str, str]]:
    """(body, HTTP headers) of a binary v2 infer request: `files` as one BYTES input of shape
    [len(files), *file_shape] (Triton's batch of one file each: [n, 1]; the service's: [n]), asking
    for `outputs` as binary data."""
    data = encode_bytes(files)
    header = {"inputs": [{"name": input_name, "shape": [len(files), *file_shape], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(data)}}],
              "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs]}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    # Triton gzips its answer for a client that accepts it (aiohttp and requests do by default):
    # CPU time on both sides that tritonclient, which asks for no compression, never spends.
    return header_bytes + data, {"Content-Type": CONTENT_TYPE, HEADER_LENGTH: str(len(header_bytes)),
                                 "Accept-Encoding": "identity"}


def request_bodies(files: list[tuple[str, bytes]], images_per_request: int, input_name: str,
                   outputs: Sequence[str], file_shape: Sequence[int] = (1,)) -> list[loadgen.Body]:
    """The load generator's bodies of `images_per_request` files each (loadgen.request_bodies' turns)."""
    def encode(chunk: list[tuple[str, bytes]]) -> loadgen.Body:
        data, headers = infer_request([content for _, content in chunk], input_name, outputs, file_shape)
        return loadgen.Body(data, headers.pop("Content-Type"), len(chunk), headers)

    return loadgen.request_bodies(files, images_per_request, encode=encode)


def infer_endpoint(model: str, input_name: str, output: str, classes: Sequence[str],
                   file_shape: Sequence[int] = (1,)) -> loadgen.Endpoint:
    """POST /v2/models/MODEL/infer with binary bodies (files as in infer_request), asking for
    `output` ([N, classes] scores); an image's top-1 label is the class of its highest score."""
    def labels(parsed: object) -> list[str] | None:
        scores = parsed.get(output) if isinstance(parsed, dict) else None
        if scores is None or scores.ndim != 2 or scores.shape[1] != len(classes):
            return None
        return [classes[i] for i in scores.argmax(axis=1)]

    return loadgen.Endpoint(f"/v2/models/{model}/infer",
                            lambda files, per_request: request_bodies(files, per_request, input_name, [output], file_shape),
                            answer, labels)


def answer(body: bytes, headers: Mapping[str, str]) -> dict[str, np.ndarray] | str:
    """parse_response, or the reason it failed: what the load generator keeps of a level's first answer."""
    try:
        return parse_response(body, headers)
    except V2Error as err:
        return str(err)


def parse_response(body: bytes, headers: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The output tensors of a v2 infer response, by name (BYTES tensors as arrays of bytes objects).

    `headers`: the response's HTTP headers; without Inference-Header-Content-Length the whole body is
    JSON. Raises V2Error for an error answer ({"error": ...}) or a body that does not add up."""
    length_text = next((value for key, value in headers.items() if key.lower() == HEADER_LENGTH.lower()), None)
    try:
        length = len(body) if length_text is None else int(length_text)
    except ValueError:
        raise V2Error(f"{HEADER_LENGTH} is not a number: {length_text!r}") from None
    if not 0 <= length <= len(body):
        raise V2Error(f"{HEADER_LENGTH} {length} is outside the {len(body)}-byte body")
    try:
        header = json.loads(body[:length])
    except (ValueError, UnicodeDecodeError) as err:
        raise V2Error(f"the response's JSON header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise V2Error("the response's JSON header is not an object")
    if "error" in header:
        raise V2Error(f"error answer: {header['error']}")
    tensors, offset, binary = {}, 0, memoryview(body)[length:]
    for output in header.get("outputs") or []:
        try:
            name, shape, datatype = output["name"], [int(n) for n in output["shape"]], output["datatype"]
        except (KeyError, TypeError, ValueError):
            raise V2Error(f"an output lacks its name, shape or datatype: {output!r}") from None
        count = int(np.prod(shape, dtype=np.int64))
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if offset + size > len(binary):
                raise V2Error(f"output {name}: {size} bytes of binary data, {len(binary) - offset} left in the body")
            raw, offset = binary[offset:offset + size], offset + size
            if datatype == "BYTES":
                tensors[name] = np.array(decode_bytes(raw, count), dtype=object).reshape(shape)
                continue
            tensors[name] = _fixed(name, datatype, shape, count, raw)
        elif "data" in output:
            values = np.asarray(output["data"], dtype=object if datatype == "BYTES" else DTYPES.get(datatype))
            if values.size != count:
                raise V2Error(f"output {name}: {values.size} values for shape {shape}")
            tensors[name] = values.reshape(shape)
        else:
            raise V2Error(f"output {name} has neither data nor binary_data_size")
    if offset != len(binary):
        raise V2Error(f"{len(binary) - offset} bytes of binary data after the last output")
    return tensors


def _fixed(name: str, datatype: str, shape: list[int], count: int, raw: memoryview) -> np.ndarray:
    if datatype not in DTYPES:
        raise V2Error(f"output {name}: unknown datatype {datatype!r}")
    dtype = np.dtype(DTYPES[datatype])
    if len(raw) != count * dtype.itemsize:
        raise V2Error(f"output {name}: {len(raw)} bytes for {count} {datatype} values")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
