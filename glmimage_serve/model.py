"""vLLM-Omni's GLM-Image AR model, told to hand the source images' token ids back to the client, per request.

For image-to-image the AR model quantises each source picture into codebook ids (`ids.prior_image`,
nearest-upsampled to d16); the DiT needs them to decode. An AR stage that is the last stage drops them
unless the model names them in `omni_client_multimodal_output_keys`; this subclass does that, and takes up
to MAX_SOURCES source pictures per prompt.

Why the regrouping below: vLLM-Omni's model returns ONE list entry per source picture encoded in the step,
and its runner hands list entry i to the i-th request of the step (`to_payload_element`). That is right for
one request with one picture only: a second picture of the same request went to another request (or
nowhere), and a text-to-image request decoding in the same step received someone else's picture. Here the
pictures are regrouped by request: `embed_input_ids` sees where each picture's placeholder run sits in the
step's tokens, `forward` maps those places to requests with the step's attention metadata (query_start_loc)
and returns one flat tensor per request of the step (its pictures' d16 ids one after another, empty for a
request without a picture this step). The client splits it by the sizes it knows. When the places cannot be
mapped (no metadata, a picture split across steps), vLLM-Omni's own list goes out unchanged.
"""

from __future__ import annotations

import torch
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm_omni.model_executor.models.glm_image.glm_image_ar import (GlmImageDummyInputsBuilder,
                                                                     GlmImageForConditionalGeneration,
                                                                     GlmImageMultiModalProcessor,
                                                                     GlmImageProcessingInfo)

from .pipeline import MAX_SOURCES


class GlmImageServingInfo(GlmImageProcessingInfo):
    def get_supported_mm_limits(self):
        return {"image": MAX_SOURCES, "img2img": MAX_SOURCES}


def placeholder_runs(is_multimodal: torch.Tensor) -> list[int]:
    """Start index of each run of True in the step's placeholder mask (one run per source picture)."""
    mask = is_multimodal.reshape(-1).to("cpu", torch.bool)
    if not bool(mask.any()):
        return []
    previous = torch.cat([torch.zeros(1, dtype=torch.bool), mask[:-1]])
    return torch.nonzero(mask & ~previous).reshape(-1).tolist()


def step_query_starts() -> list[int] | None:
    """The step's per-request token offsets (query_start_loc, num_reqs + 1 values), or None."""
    try:
        from vllm.forward_context import get_forward_context

        metadata = get_forward_context().attn_metadata
    except Exception:  # noqa: BLE001 - no context: profiling or a dummy run
        return None
    if isinstance(metadata, list):
        metadata = metadata[0] if metadata else None
    for item in (metadata or {}).values() if isinstance(metadata, dict) else ():
        starts = getattr(item, "query_start_loc", None)
        if starts is None:
            starts = getattr(getattr(item, "common", None), "query_start_loc", None)
        if isinstance(starts, torch.Tensor):
            return [int(v) for v in starts.reshape(-1).tolist()]
    return None


def per_request(pictures: list[torch.Tensor], runs: list[int], query_starts: list[int] | None):
    """One flat tensor per request of the step (its pictures' ids in order), or None if unmappable."""
    if not query_starts or len(runs) != len(pictures):
        return None
    num_requests = len(query_starts) - 1
    grouped: list[list[torch.Tensor]] = [[] for _ in range(num_requests)]
    for picture, start in zip(pictures, runs):
        index = next((r for r in range(num_requests) if query_starts[r] <= start < query_starts[r + 1]), None)
        if index is None:
            return None
        grouped[index].append(picture.reshape(-1))
    return [torch.cat(items) if items else torch.zeros(0, dtype=torch.long) for items in grouped]


@MULTIMODAL_REGISTRY.register_processor(GlmImageMultiModalProcessor, info=GlmImageServingInfo,
                                        dummy_inputs=GlmImageDummyInputsBuilder)
class GlmImageARForServing(GlmImageForConditionalGeneration):
    omni_client_multimodal_output_keys = ("ids.prior_image",)

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, **kwargs):
        is_multimodal = kwargs.get("is_multimodal")
        self._picture_runs = placeholder_runs(is_multimodal) if is_multimodal is not None else []
        return super().embed_input_ids(input_ids, multimodal_embeddings, **kwargs)

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        runs, self._picture_runs = getattr(self, "_picture_runs", []), []
        mm = getattr(output, "multimodal_outputs", None)
        ids = mm.get("ids") if isinstance(mm, dict) else None
        pictures = ids.get("prior_image") if isinstance(ids, dict) else None
        if isinstance(pictures, (list, tuple)) and pictures:
            grouped = per_request(list(pictures), runs, step_query_starts())
            if grouped is not None:
                ids["prior_image"] = grouped
        return output
