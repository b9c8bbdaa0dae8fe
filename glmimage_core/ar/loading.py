"""Loading the AR model (`GlmImageForConditionalGeneration`) and its processor.

Accepts the hub's diffusers layout (`model_index.json`, `vision_language_encoder/`,
`processor/`) and a plain transformers folder. Weights are read from safetensors
only, never with remote code, and from the network only when the user names a
hub id and the process is online. Loaded models are cached so that re-running a
graph does not reload 18 GB.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..memory import vram_plan
from ..weights.cast_layers import keep_embeddings_on_host, make_castable, parse_weight_dtype
from ..dtypes import DEFAULT_WEIGHTS, WeightDtype, resolve_dtype
from ..errors import GlmImageInputError
from ..memory.placement import forget
from ..memory.model_cache import ModelCache
from ..weights import formats
from ..weights.model_folders import resolve_model_path
from ..weights.part_loading import file_json, file_weight_dtype, lean_model, text_folder
from ..payloads import ARModel
from ..memory.host import DEVICE_CHOICES as _DEVICES, fp8_storage_possible, host, torch_device

DEVICE_CHOICES = list(_DEVICES)
ATTENTION_CHOICES = ["sdpa", "eager"]
QUANTIZATION_CHOICES = ["none", "int8", "nf4"]


@dataclass(frozen=True)
class ARLayout:
    model_dir: str
    processor_dir: str
    subfolder_model: str | None = None  # for hub ids
    subfolder_processor: str | None = None


def find_layout(path: str) -> ARLayout:
    """Where the model weights and the processor files are inside `path`."""
    root = Path(path)
    if not root.exists():
        raise GlmImageInputError(f"model folder {path!r} does not exist")
    if not root.is_dir():
        raise GlmImageInputError(f"model {path!r} is a file; choose the folder that holds config.json "
                                 "or the hub layout with model_index.json")
    if (root / "vision_language_encoder").is_dir():
        model_dir, proc_dir = root / "vision_language_encoder", root / "processor"
        if not proc_dir.is_dir():
            raise GlmImageInputError(f"model folder {path!r} has vision_language_encoder/ but no processor/ "
                                     "folder: copy the hub's processor/ next to it")
    elif (root / "config.json").is_file():
        model_dir = proc_dir = root
    elif (root / "model_index.json").is_file():
        raise GlmImageInputError(f"model folder {path!r} has model_index.json but no vision_language_encoder/: "
                                 "download the AR model too (zai-org/GLM-Image, folder vision_language_encoder)")
    else:
        raise GlmImageInputError(f"model folder {path!r} is empty or not a GLM-Image model: expected "
                                 "config.json, or the hub layout (model_index.json, vision_language_encoder/, processor/)")
    _check_config(model_dir)
    if not any(model_dir.glob("*.safetensors")):
        raise GlmImageInputError(f"model folder {str(model_dir)!r} has no .safetensors weights; "
                                 "only safetensors are loaded (no pickle .bin files)")
    return ARLayout(str(model_dir), str(proc_dir))


def _check_config(model_dir: Path) -> None:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise GlmImageInputError(f"model folder {str(model_dir)!r} has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GlmImageInputError(f"{str(config_file)!r} is not valid JSON: {err}") from err
    if model_type != "glm_image":
        raise GlmImageInputError(f"model folder {str(model_dir)!r} holds a {model_type!r} model, "
                                 "not GLM-Image (model_type 'glm_image')")


def _checkpoint_dtype(model_dir: str) -> torch.dtype | None:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    name = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(name)


def _is_hub_id(name: str) -> bool:
    return "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1 and not os.path.exists(name)


_CACHE: ModelCache[ARModel] = ModelCache(release=lambda ar: forget(ar.model))


def quantization_config(choice: str, dtype: torch.dtype, device: torch.device):
    """bitsandbytes settings for int8 / nf4 weights (about 1/2 and 1/4 of bf16's VRAM), or None.

    bitsandbytes is optional: it is imported only here, and its absence is a
    message, not a crash when ComfyUI loads the pack. The vision encoder, the VQ
    codebook and the output head stay unquantized (small, and sensitive).
    """
    if choice == "none":
        return None
    if choice not in QUANTIZATION_CHOICES:
        raise GlmImageInputError(f"quantization {choice!r} is not one of {QUANTIZATION_CHOICES}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise GlmImageInputError(f"quantization={choice} needs the optional package bitsandbytes "
                                 "(pip install bitsandbytes, in ComfyUI's Python), or choose none") from err
    if device.type != "cuda":
        raise GlmImageInputError(f"quantization={choice} runs on CUDA GPUs only (bitsandbytes); the model is "
                                 f"going to {device.type}: choose none")
    from transformers import BitsAndBytesConfig

    skip = ["lm_head", "visual", "vqmodel"]
    if choice == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                              llm_int8_skip_modules=skip)


def load_ar_model(model: str, dtype: str = "auto", device: str = "auto", attention: str = "sdpa",
                  quantization: str = "none", weight_dtype: str = "default") -> ARModel:
    """Load (or return the cached) AR model and processor.

    One model per path is kept: asking for the same folder with another dtype,
    device, quantization or weight_dtype replaces the cached copy instead of
    holding two. Where the host gives cast layers (ComfyUI), the model's layers
    become them (so the host can manage, stream and fp8-store them) and its text
    embedding table stays in RAM; `weight_dtype` fp8 needs that, so it needs ComfyUI.
    `weight_dtype` is parsed here, once: the model carries the parsed value.
    """
    if attention not in ATTENTION_CHOICES:
        raise GlmImageInputError(f"attention {attention!r} is not one of {ATTENTION_CHOICES}")
    path = resolve_model_path(model)
    target = torch_device(device)
    if Path(path).is_file():
        return _load_file_cached(formats.inspect(path, want="ar"), dtype, target, attention, quantization,
                                 str(weight_dtype))
    weights = parse_weight_dtype(weight_dtype, fp8_storage_possible(), quantization)
    if _is_hub_id(path) and not Path(path).exists():
        layout = _hub_layout(path)
    else:
        layout = find_layout(path)
    torch_dtype = resolve_dtype(dtype, target, _checkpoint_dtype(layout.model_dir)
                                if not layout.subfolder_model else torch.bfloat16, bf16_fallback=torch.float16)
    quant = quantization_config(quantization, torch_dtype, target)
    key = (torch_dtype, str(target), attention, quantization, weights)
    return _CACHE.get_or_load(path, key, lambda: _load(path, layout, torch_dtype, target, attention, quantization,
                                                       quant, weights))


def load_ar_processor(model: str) -> ARModel:
    """The AR model's processor and config only, for prompts whose tokens an AR server samples.

    The model inside is built on the `meta` device: no weights are read and no memory is taken (the
    real model lives on the server), yet its config answers what the prompt node and the server check
    need (vocabulary, special ids, codebook size). `generate_tokens` refuses it, naming the loaders."""
    from transformers import AutoConfig, AutoProcessor, GlmImageForConditionalGeneration

    path = resolve_model_path(model)
    layout = find_layout(path)
    try:
        processor = AutoProcessor.from_pretrained(layout.processor_dir, local_files_only=True,
                                                  trust_remote_code=False)
        config = AutoConfig.from_pretrained(layout.model_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as err:
        raise GlmImageInputError(f"could not read the processor and config of {path!r}: {err}") from err
    with torch.device("meta"):
        shell = GlmImageForConditionalGeneration(config)
    return ARModel(model=shell, processor=processor, path=path, dtype=torch.float32,
                   device=torch.device("meta"), attention="none")


def _load_file_cached(source, dtype: str, target: torch.device, attention: str, quantization: str,
                      weight_dtype: str) -> ARModel:
    """A single AR file: its config, processor files and generation settings come from its metadata."""
    if quantization != "none":
        raise GlmImageInputError(f"quantization {quantization} loads the hub folder's bf16 weights; "
                                 f"{source.path.name!r} is a single file: choose quantization none (an fp8 file "
                                 "is already half of bf16)")
    kept = parse_weight_dtype(file_weight_dtype(source, weight_dtype), fp8_storage_possible(), quantization)
    torch_dtype = resolve_dtype(dtype, target, torch.bfloat16, bf16_fallback=torch.float16)
    key = (torch_dtype, str(target), attention, quantization, kept)
    return _CACHE.get_or_load(str(source.path), key, lambda: _load_file(source, torch_dtype, target, attention, kept))


def _load_file(source, dtype: torch.dtype, device: torch.device, attention: str, weight_dtype: WeightDtype) -> ARModel:
    from transformers import AutoProcessor, GenerationConfig

    try:
        processor = AutoProcessor.from_pretrained(text_folder(source, "processor/"), local_files_only=True,
                                                  trust_remote_code=False)
    except (OSError, ValueError, TypeError) as err:
        raise GlmImageInputError(f"could not build the processor from {source.path.name!r}'s metadata: {err}") from err
    model = _lean(source, dtype, attention, weight_dtype)
    if "generation_config.json" in source.files:
        model.generation_config = GenerationConfig.from_dict(file_json(source, "generation_config.json"))
    return prepare_ar_model(model, processor, str(source.path), dtype, device, attention, "none", weight_dtype)


def _lean(source, dtype: torch.dtype, attention: str, weights: WeightDtype):
    """The AR model read tensor by tensor: bf16 Linear weights rounded to fp8 as they are read when asked."""
    store = weights.storage if not source.storage.startswith("fp8") else None
    model, _ = lean_model(source, "ar", dtype, store,
                          lambda name: vram_plan.name_matches(name, vram_plan.AR_FP8_KEEP), attention)
    return model


def cached_models() -> list[ARModel]:
    return _CACHE.values()


def _hub_layout(repo_id: str) -> ARLayout:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        raise GlmImageInputError(f"model {repo_id!r} is not a folder under models/glm_image/ and the hub is "
                                 "offline (HF_HUB_OFFLINE): download it into models/glm_image/ first")
    return ARLayout(repo_id, repo_id, "vision_language_encoder", "processor")


def _load(path: str, layout: ARLayout, dtype: torch.dtype, device: torch.device, attention: str,
          quantization: str = "none", quant_config=None, weights: WeightDtype = DEFAULT_WEIGHTS) -> ARModel:
    from safetensors import SafetensorError
    from transformers import AutoProcessor, GenerationConfig, GlmImageForConditionalGeneration

    local = layout.subfolder_model is None
    common = dict(local_files_only=local, trust_remote_code=False)
    placement = {} if quant_config is None else {"quantization_config": quant_config,
                                                  "device_map": {"": device}}
    try:
        processor = AutoProcessor.from_pretrained(
            layout.processor_dir, subfolder=layout.subfolder_processor or "", **common)
    except (OSError, ValueError, TypeError) as err:
        raise GlmImageInputError(f"could not load the processor (tokenizer + image processor) from "
                                 f"{layout.processor_dir!r}: {err}") from err
    if local and quant_config is None and not weights.is_default:
        # fp8 from the bf16 folder: rounded as each tensor is read, never the bf16 model in RAM.
        model = _lean(formats.inspect(layout.model_dir, want="ar"), dtype, attention, weights)
        model.generation_config = GenerationConfig.from_pretrained(layout.model_dir, local_files_only=True) \
            if (Path(layout.model_dir) / "generation_config.json").is_file() else model.generation_config
        return prepare_ar_model(model, processor, path, dtype, device, attention, quantization, weights)
    try:
        model = GlmImageForConditionalGeneration.from_pretrained(
            layout.model_dir, subfolder=layout.subfolder_model or "", dtype=dtype, use_safetensors=True,
            attn_implementation=attention, **placement, **common)
    except SafetensorError as err:
        raise GlmImageInputError(f"a safetensors file in {layout.model_dir!r} is corrupted or incomplete "
                                 f"({err}); download it again") from err
    except OSError as err:
        raise GlmImageInputError(f"could not load the AR model from {layout.model_dir!r}: {err}") from err
    return prepare_ar_model(model, processor, path, dtype, device, attention, quantization, weights)


def prepare_ar_model(model: torch.nn.Module, processor, path: str, dtype: torch.dtype, device: torch.device,
                     attention: str = "sdpa", quantization: str = "none",
                     weight_dtype: WeightDtype | str = DEFAULT_WEIGHTS) -> ARModel:
    """A loaded GlmImageForConditionalGeneration made ready for the pack: eval, counted for the VRAM plan, and
    where the host gives cast layers (ComfyUI) given them (fp8 with `weight_dtype`) and its text embedding table
    kept in RAM.

    Separate from loading so that benchmarks can prepare models built in place with random weights (they may
    name `weight_dtype` as a string; it is parsed as the loader parses it)."""
    weights = parse_weight_dtype(weight_dtype, fp8_storage_possible(), quantization)
    model.eval().requires_grad_(False)
    # Counted before any change: the plan prices every option from the same parameter counts.
    inventory = vram_plan.inventory(model, vram_plan.classify_ar, dtype, host=vram_plan.AR_HOST_EMBEDDINGS)
    ops = host().cast_ops
    pinned: list[str] = []
    if ops is not None:
        keep_embeddings_on_host(model, list(vram_plan.AR_HOST_EMBEDDINGS))
        if quantization == "none":  # bitsandbytes layers are neither castable nor movable
            make_castable(model, ops.operations, weights.storage,
                          keep_dtype=lambda name: vram_plan.name_matches(name, vram_plan.AR_FP8_KEEP),
                          fp8_operations=ops.fp8_operations)
            pinned = _pinned_modules(model)
    if quantization == "none":  # quantized weights are placed by from_pretrained and cannot move
        # Inside ComfyUI its model manager moves the model to the GPU when a run needs it.
        model.to(host().park_device(device))
    return ARModel(model=model, processor=processor, path=path, dtype=dtype, device=device, attention=attention,
                   quantization=quantization, weight_dtype=weights, pinned=pinned, inventory=inventory,
                   embeddings_on_host=ops is not None)


def _pinned_modules(model: torch.nn.Module) -> list[str]:
    """Submodules read without their forward, which must be on the device even while the rest streams:
    the VQ codebook (normalised and compared directly), the vision position table (interpolated
    directly), and the module of the first parameter (`generate()` takes the device from it)."""
    first = next(name for name, _ in model.named_parameters()).rpartition(".")[0]
    wanted = ["model.vqmodel", "model.visual.embeddings", first]
    names = {name for name, _ in model.named_modules()}
    return [name for name in dict.fromkeys(wanted) if name in names]
