"""Locust scenarios for the image-classification service: weighted /classify and /features tasks.

    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 \\
        --headless -u 16 -r 4 -t 1m --csv reports/locust --html reports/locust.html

Options (after locust's own; each also as an environment variable, e.g. LOCUST_IMAGES_DIR):
  --images-dir DIR          image files to send, searched recursively (default: 8 generated JPEGs, offline)
  --images-limit N          at most N files from --images-dir (default 64)
  --images-per-request N    images in each request (default 1)
  --model NAME              the model field (default: empty, the service's default model)
  --top-k K                 /classify's top_k (default 1)
  --classify-weight W, --features-weight W   how often each task runs (default 3 and 1)

Every answer that is not 2xx is a failure, and so is a 2xx whose JSON is not one result per image.
Users send their next request as soon as the last is answered (no wait time): -u is the concurrency.
See loadtests/README.md for how to read the output.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from locust import FastHttpUser, constant, events

from loadtests.images import ImagesError, generated_jpegs, image_files, read_files
from loadtests.loadgen import Body, multipart_body

# Request bodies, encoded once at the test's start (so that the users spend their time sending).
BODIES: dict[str, list[Body]] = {"classify": [], "features": []}
_BODIES_PER_TASK = 64
# How often each task runs, relative to the other: the defaults of --classify-weight and
# --features-weight, which set ImageClassifierUser.tasks at the test's start (the one place weights are set).
DEFAULT_WEIGHTS = {"classify": 3, "features": 1}


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("image classifier", "options of loadtests/locustfile.py")
    group.add_argument("--images-dir", default="", env_var="LOCUST_IMAGES_DIR",
                       help="image files to send, searched recursively (default: generated JPEGs)")
    group.add_argument("--images-limit", type=int, default=64, env_var="LOCUST_IMAGES_LIMIT",
                       help="at most this many files from --images-dir")
    group.add_argument("--images-per-request", type=int, default=1, env_var="LOCUST_IMAGES_PER_REQUEST",
                       help="images in each request")
    group.add_argument("--model", default="", env_var="LOCUST_MODEL", help="model field (empty: the service's default)")
    group.add_argument("--top-k", type=int, default=1, env_var="LOCUST_TOP_K", help="top_k of /classify")
    for name in DEFAULT_WEIGHTS:
        group.add_argument(f"--{name}-weight", type=int, default=DEFAULT_WEIGHTS[name], env_var=f"LOCUST_{name.upper()}_WEIGHT",
                           help=f"how often /{name} runs, relative to the other task (default {DEFAULT_WEIGHTS[name]})")


@events.test_start.add_listener
def _prepare(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options.images_dir:
        try:
            files = read_files(image_files(Path(options.images_dir), options.images_limit))
        except ImagesError as err:
            raise SystemExit(f"error: --images-dir: {err}") from None
    else:
        files = generated_jpegs(8)
    if options.images_per_request < 1 or options.classify_weight < 0 or options.features_weight < 0 or \
            options.classify_weight + options.features_weight == 0:
        raise SystemExit("error: --images-per-request must be >= 1 and the task weights >= 0, not both 0")
    rng = random.Random(0)
    model = {"model": options.model} if options.model else {}
    for name, fields in (("classify", {**model, "top_k": str(options.top_k)}), ("features", model)):
        BODIES[name] = [multipart_body(rng.choices(files, k=options.images_per_request), fields)
                        for _ in range(_BODIES_PER_TASK)]
    weights = {name: getattr(options, f"{name}_weight") for name in DEFAULT_WEIGHTS}
    if getattr(options, "equal_weights", False):  # locust's --equal-weights: every task with a weight, once
        weights = {name: min(1, weight) for name, weight in weights.items()}
    ImageClassifierUser.tasks = weighted_tasks(weights)


def weighted_tasks(weights: dict[str, int]) -> list:
    """User.tasks for these weights: each task method repeated `weight` times (Locust picks one at random)."""
    return [getattr(ImageClassifierUser, name) for name, weight in weights.items() for _ in range(weight)]


class ImageClassifierUser(FastHttpUser):
    """Posts to /classify and /features; `tasks` comes from the weight options (no @task weights)."""

    wait_time = constant(0)

    def _post(self, route: str) -> None:
        body = random.choice(BODIES[route])
        with self.client.post(f"/{route}", data=body.data, headers={"Content-Type": body.content_type},
                              name=f"/{route}", catch_response=True) as response:
            if not 200 <= (response.status_code or 0) < 300:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                answers = json.loads(response.content)
            except ValueError:
                answers = None
            if not isinstance(answers, list) or len(answers) != body.images:
                response.failure(f"expected a JSON list of {body.images} results")
            else:
                response.success()

    def classify(self) -> None:
        self._post("classify")

    def features(self) -> None:
        self._post("features")


# Until the test starts (locust --list, a User run outside the command line), the options' defaults.
ImageClassifierUser.tasks = weighted_tasks(DEFAULT_WEIGHTS)
