"""Inputs and helpers that several GLM-Image nodes share: one definition each, so the loaders agree on names,
choices, defaults and tooltips (and a saved workflow's widget values land on the same inputs everywhere)."""

from dataclasses import dataclass

from ..glmimage_core.payloads import DecoderBundle
from ..glmimage_core.weights.cast_layers import WEIGHT_DTYPE_CHOICES
from ..glmimage_core.dtypes import DTYPE_CHOICES
from ..glmimage_core.images import split_batch
from ..glmimage_core.weights.model_folders import list_model_folders, list_weight_files
from ..glmimage_core.memory.host import DEVICE_CHOICES
from .api import ADVANCED, io

NO_MODELS = "(no models in models/glm_image)"


def model_choices(part: str | None = None) -> list[str]:
    """The folders under models/glm_image/, then `part`'s single files (models/glm_image/ and its ComfyUI
    folder: diffusion_models/, vae/, text_encoders/), or a placeholder that says where to put them."""
    return list_model_folders() + (list_weight_files(part) if part else []) or [NO_MODELS]


def require_model(model: str) -> str:
    if model == NO_MODELS:
        raise ValueError("model: no model folder found in models/glm_image/ and no GLM-Image file in ComfyUI's "
                         "model folders. Download zai-org/GLM-Image into models/glm_image/GLM-Image (or the "
                         "single files, README 'Weights') and refresh the page.")
    return model


MODEL_TOOLTIP = ("A folder under models/glm_image/ in the hub layout of zai-org/GLM-Image (transformer/, vae/, "
                 "text_encoder/, tokenizer/, scheduler/).")
_FILE_PLACES = {"dit": "diffusion_models/", "vae": "vae/", "glyph": "text_encoders/", "ar": "text_encoders/"}


def model_tooltip(part: str) -> str:
    """The model input's tooltip on a loader that also takes `part`'s single file."""
    return (f"{MODEL_TOOLTIP} Or one GLM-Image file of this part (bf16 or fp8, made by 'Save GLM-Image checkpoint' "
            f"or 'python -m glmimage_core convert') from {_FILE_PLACES[part]} or models/glm_image/.")
WEIGHT_DTYPE_TOOLTIP = ("How the DiT's weights are stored: default = the dtype above (bf16: ~12.9 GB); fp8_e4m3fn / "
                        "fp8_e5m2 = 8-bit storage (~6.5 GB), computed in the dtype above, slightly different "
                        "pictures (ComfyUI's own weight_dtype option).")
VRAM_LIMIT_TOOLTIP = ("Most GB of the DiT to keep on the GPU; the rest streams from RAM each step (slower). "
                      "0 = ComfyUI decides (streams only what does not fit).")


def vram_limit_bytes(vram_limit_gb: float) -> int | None:
    return int(vram_limit_gb * (1 << 30)) if vram_limit_gb and vram_limit_gb > 0 else None


@dataclass(frozen=True)
class LoaderDecoder:
    """What 'Load GLM-Image decoder' hands the decode node on its GLMIMAGE_DECODER socket: the cached bundle
    (shared by every loader of that folder) and this loader's own VRAM limit beside it, never on it."""

    bundle: DecoderBundle
    vram_limit: int | None = None


def loader_decoder(decoder) -> LoaderDecoder:
    """A decode node's `decoder` input as (bundle, limit): a plain DecoderBundle (a script's) has no limit."""
    return decoder if isinstance(decoder, LoaderDecoder) else LoaderDecoder(decoder)


def device_input() -> io.Combo.Input:
    return io.Combo.Input("device", options=list(DEVICE_CHOICES), default="auto",
                          tooltip="auto/gpu = ComfyUI's compute device; cpu is very slow.", **ADVANCED)


def dit_weight_dtype_input(optional: bool = False) -> io.Combo.Input:
    """The DiT's weight_dtype, on the DiT loader and the decoder loader (optional there: added after 0.1.0)."""
    return io.Combo.Input("weight_dtype", options=WEIGHT_DTYPE_CHOICES, default="default",
                          tooltip=WEIGHT_DTYPE_TOOLTIP, optional=optional)


def vram_limit_input(optional: bool = False) -> io.Float.Input:
    return io.Float.Input("vram_limit_gb", default=0.0, min=0.0, max=256.0, step=0.5, tooltip=VRAM_LIMIT_TOOLTIP,
                          optional=optional, **ADVANCED)


def source_images(source_image, source_image_2) -> list | None:
    """The image-to-image sources of a decode or conditioning node, one picture each, in the prompt's order."""
    sources = []
    if source_image is not None:
        sources += split_batch(source_image, "source_image")
    if source_image_2 is not None:
        sources += split_batch(source_image_2, "source_image_2")
    return sources or None


def dtype_input() -> io.Combo.Input:
    return io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto",
                          tooltip="Compute precision. auto = the checkpoint's own (bf16 for the hub weights).",
                          **ADVANCED)
