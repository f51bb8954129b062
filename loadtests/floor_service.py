"""The framework floor: `bentoml serve loadtests.floor_service:Floor`.

POST /classify takes the same multipart upload as the real service, through the same request
checks (service.requests: RequestGuard, ClassifyInput), with the same workers, limits and
timeout (the same SERVICE_* settings), and answers a constant of the real answer's shape without
looking at the images. Loaded like the real service, it measures what HTTP, BentoML (which
parses the form; the input spec reads each file's bytes) and the load generator cost when
there is no work: the third term of the benchmark's ceiling.
"""

from __future__ import annotations

import bentoml

from service import settings
from service.requests import IMAGE_FORM, RequestGuard, input_specs
from service.responses import fix_media_types

SETTINGS = settings.load(default_models=("floor",))
ClassifyInput, _, _ = input_specs(SETTINGS.max_images_per_request)

_ANSWER = {"label": "floor", "probability": 1.0, "top_k": [{"label": "floor", "probability": 1.0}],
           "model": "floor", "version": "0"}


@bentoml.service(name="floor", workers=SETTINGS.workers, traffic={"timeout": SETTINGS.timeout_s})
class Floor:
    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, images: list[bytes], model: str, top_k: int) -> list[dict]:
        """One constant answer per image."""
        return [_ANSWER] * len(images)


Floor.add_asgi_middleware(RequestGuard, routes={"/classify": IMAGE_FORM}, max_body_bytes=SETTINGS.max_body_bytes)
fix_media_types(Floor)  # as the real service does
