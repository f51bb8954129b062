"""HTTP out: what BentoML would work out again for every response, worked out once."""

from __future__ import annotations


def fix_media_types(*services) -> None:
    """Give every API of `services` (bentoml.service classes) its response media type up front.

    BentoML picks an API's response media type from the JSON schema of its output, which pydantic
    builds anew for every response: 21% of the public worker's busy time and 9% of the inference
    worker's at one client (py-spy, docs/benchmarks.md). The type never changes; BentoML uses the
    output spec's `media_type` when it is set, so it is set here to what BentoML would compute."""
    for service in services:
        for method in service.apis.values():
            method.output_spec.media_type = method.output_spec.mime_type()
