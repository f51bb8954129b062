"""The naive baseline: the seed documents' way of predicting, behind a minimal HTTP server.

    python -m loadtests.naive_server --model-dir models/finetuned --port 8000

Python's ThreadingHTTPServer (a thread per connection), the multipart body split on its boundary,
each image preprocessed exactly as the service does it (service.imaging.preprocess), then
`model.predict(image[None])` on the trained Keras model (model.keras), one image per call, one call
at a time (Keras models are not safe to call from several threads at once). The answer has the
shape of the service's /classify answer. GET /readyz answers 200 once the model is loaded.

This is the only benchmark process that imports TensorFlow (through training/, which loads the
model with its custom layers); service/ never does.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from service import imaging, settings
from training.evaluate import as_class_probabilities


def split_multipart(body: bytes, content_type: str, field: str = "images") -> list[bytes]:
    """The contents of the parts named `field` of a multipart/form-data body."""
    boundary = content_type.partition("boundary=")[2].strip().strip('"').encode()
    if not boundary:
        raise ValueError("no multipart boundary in the content type")
    files = []
    for part in body.split(b"--" + boundary)[1:-1]:
        headers, _, content = part.partition(b"\r\n\r\n")
        if f'name="{field}"'.encode() in headers:
            files.append(content[:-2])  # the part ends with CRLF before the next boundary
    return files


class NaiveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects
    model = None
    manifest: dict = {}
    spec: imaging.InputSpec
    config: settings.Settings
    lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002 - the access log would cost more than the work
        pass

    def do_GET(self):
        if self.path in ("/readyz", "/livez"):
            return self._answer(HTTPStatus.OK, b"ok", "text/plain")
        self._answer(HTTPStatus.NOT_FOUND, b'{"error": "not found"}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/classify":
            return self._answer(HTTPStatus.NOT_FOUND, b'{"error": "not found"}')
        try:
            files = split_multipart(body, self.headers.get("Content-Type", ""))
            if not files:
                raise ValueError("no images")
            answers = []
            for data in files:
                image = imaging.preprocess(data, self.spec, max_pixels=self.config.max_image_pixels,
                                           jpeg_reduce=self.config.jpeg_reduce)
                with self.lock:
                    probabilities = self.model.predict(image[None], verbose=0)[0]
                answers.append(self._classification(as_class_probabilities(probabilities[None])[0]))
        except Exception as err:  # a baseline: every failure is the client's 400, with its message
            return self._answer(HTTPStatus.BAD_REQUEST, json.dumps({"error": str(err)}).encode())
        self._answer(HTTPStatus.OK, json.dumps(answers).encode())

    def _classification(self, probabilities: np.ndarray) -> dict:
        classes = self.manifest["classes"]
        best = int(np.argmax(probabilities))
        entry = {"label": classes[best], "probability": float(probabilities[best])}
        return {**entry, "top_k": [entry], "model": self.manifest.get("name", ""), "version": "keras"}

    def _answer(self, status: HTTPStatus, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.naive_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a trained model's folder (model.keras, manifest.json)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    manifest_path = args.model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"error: {args.model_dir} has no manifest.json: not a trained model's folder")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from training.errors import UserError
    from training.manifest import load_keras_model

    try:
        model = load_keras_model(args.model_dir)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    manifest = json.loads(manifest_path.read_text())
    spec = manifest["input"]
    NaiveHandler.model = model
    NaiveHandler.manifest = manifest
    NaiveHandler.spec = imaging.InputSpec(int(spec["height"]), int(spec["width"]), int(spec["channels"]))
    NaiveHandler.config = settings.load(default_models=(manifest.get("name") or "naive",))
    model.predict(np.zeros((1, *model.input_shape[1:]), np.float32), verbose=0)  # build predict's graph first
    server = ThreadingHTTPServer((args.host, args.port), NaiveHandler)
    server.daemon_threads = True
    print(f"naive Keras server for {args.model_dir} on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
