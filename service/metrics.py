"""The service's own Prometheus metrics, beside BentoML's (bentoml_service_*), on the same /metrics.

BentoML runs every worker with PROMETHEUS_MULTIPROC_DIR set before it imports this module, so
prometheus_client writes each process's values to files there and /metrics adds them up: the
numbers are right with any number of workers. Label values come only from small fixed sets:
model names from SERVICE_MODELS, labels from the models' manifests, reasons from errors.Reason,
endpoints and status classes from observe.py. A gauge says how it adds up across processes
(multiprocess_mode): "livesum" counts what the live processes hold, "livemax" the largest.
docs/monitoring.md says what each series means and which rules and panels read it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NAMESPACE = "imgcls"
# Seconds, from 1 ms (a small batch on a GPU) to 10 s (a large batch of a large model on a busy CPU).
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_IMAGES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Queue wait: fine from 50 ms to 2.5 s, where SERVICE_MAX_LATENCY_MS (default 2 s) and so the
# queue-wait alert's threshold (80% of it) lie.
_QUEUE_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
                  1.0, 1.5, 2.0, 2.5, 5.0, 10.0)
# A whole request, up to SERVICE_TIMEOUT_S's default (60 s); fine from 100 ms to 1.5 s, where
# a CPU's answers and the latency alert's budget (1 s) lie.
_REQUEST_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)

INFERENCE_SECONDS = Histogram(
    "inference_duration_seconds", "ONNX Runtime time of one batched inference call",
    ["model"], namespace=NAMESPACE, buckets=_SECONDS,
)
BATCH_IMAGES = Histogram(
    "batch_size_images", "Images in one batched inference call",
    ["model"], namespace=NAMESPACE, buckets=_IMAGES,
)
PREPROCESS_SECONDS = Histogram(
    "preprocess_duration_seconds", "Decoding, orienting and resizing one image",
    ["model"], namespace=NAMESPACE, buckets=_SECONDS,
)
IMAGES = Counter(
    "images_processed_total", "Images answered, by model and endpoint",
    ["model", "endpoint"], namespace=NAMESPACE,
)
PREDICTIONS = Counter(
    "predictions_total", "Top-1 predictions, by model and label",
    ["model", "label"], namespace=NAMESPACE,
)
REJECTED = Counter(
    "rejected_requests_total", "Requests refused, by reason (errors.Reason)",
    ["reason"], namespace=NAMESPACE,
)
# 1 for each served model; the labels say which version and which execution provider.
MODEL_INFO = Gauge(
    "model_info", "Served model version and the ONNX Runtime execution provider it runs on",
    ["model", "version", "provider"], namespace=NAMESPACE, multiprocess_mode="livemax",
)
# How full the service is now: images admitted into a model's batching queue and not yet answered
# (summed over workers; the HPA scales on it), and how long a request's images waited in that queue
# before their batch began (service/batching.py records both).
IN_FLIGHT = Gauge(
    "requests_in_flight", "Images admitted to the model's batching queue and not yet answered",
    ["model"], namespace=NAMESPACE, multiprocess_mode="livesum",
)
QUEUE_WAIT_SECONDS = Histogram(
    "queue_wait_seconds", "Time a request's images waited in their model's batching queue before their batch began",
    ["model"], namespace=NAMESPACE, buckets=_QUEUE_SECONDS,
)
# Where a request's time goes, end to end (service/observe.py records it).
REQUEST_SECONDS = Histogram(
    "request_duration_seconds", "HTTP request duration, first byte in to last byte out, by endpoint and status class",
    ["endpoint", "status_class"], namespace=NAMESPACE, buckets=_REQUEST_SECONDS,
)
# SERVICE_MAX_LATENCY_MS, so that the queue-wait alert compares against the bound the service runs with.
MAX_LATENCY_SECONDS = Gauge(
    "max_latency_seconds", "SERVICE_MAX_LATENCY_MS in seconds: the longest a request may wait in a batching queue",
    namespace=NAMESPACE, multiprocess_mode="livemax",
)
