"""What a weights path holds, told from headers and metadata before any weight is read: the seam formats plug into.

A path a loader gets is one of these containers:

- ``hub``: the zai-org/GLM-Image download (model_index.json + one folder per part); holds every part.
- ``folder``: one part's own folder (config.json + *.safetensors): vision_language_encoder/, transformer/, ...
- ``safetensors``: one file holding one part. The part, its config and the small text files it needs (the AR
  model's tokenizer, processor settings and chat template; the DiT's scheduler settings and latent statistics)
  travel in the safetensors metadata under the ``glmimage.*`` keys below, so one file is all a user needs.
- ``gguf`` (registered by the GGUF module, see "Plugging in a container").

`inspect(path, want)` returns a `WeightSource` (part, config, storage format, size) after reading only headers;
anything that is not a GLM-Image part raises `Foreign`, a GlmImageInputError whose message names the file and
what it looks like instead (a Flux DiT, an SDXL VAE, a Qwen text encoder, a LoRA, a truncated download...).
`open_tensors(source)` gives the `TensorReader` the loaders read from, one tensor at a time.

Storage formats (`WeightSource.storage`; `fp8.py` holds the fp8 conventions):
  ``bf16`` / ``fp16`` / ``fp32``   plain weights (a folder or a file)
  ``fp8_e4m3fn`` / ``fp8_e5m2``    Linear weights in fp8 with a float32 scale each, in ComfyUI's conventions:
      ``convention == "comfy_quant"``: ComfyUI 0.33's per layer ``<layer>.weight`` (fp8), ``<layer>.weight_scale``
      and ``<layer>.comfy_quant`` (uint8 JSON ``{"format": "float8_e4m3fn"}``), or the same layers listed in the
      ``_quantization_metadata`` metadata entry;
      ``convention == "scaled_fp8"``: the older form, a ``scaled_fp8`` marker tensor + ``<layer>.scale_weight``.
  ``gguf:<qtype>``                 e.g. ``gguf:Q8_0``: set by the GGUF container.

Plugging in a container (how the GGUF reader joins; this interface stays as it is)::

    from glmimage_core.weights import formats
    formats.register_container(formats.Container(
        name="gguf", suffixes=(".gguf",), sniff=lambda head: head[:4] == b"GGUF",
        inspect=inspect_gguf,    # (path: Path) -> WeightSource(container="gguf", storage="gguf:Q8_0", ...);
                                 # raise formats.Foreign(path, "a Flux DiT (GGUF)") for another model's file
        open=open_gguf))         # (source: WeightSource) -> TensorReader (see tensor_reader.TensorReader)
    formats.register_layers("gguf", make_layers)   # (model, comfy_ops) -> cast_layers.CastSummary: gives the
                                 # leaves their layer classes once the tensors read are assigned (GGMLOps);
                                 # part_loading.lean_model calls it right after filling, before the loader's
                                 # prepare_* (make_castable leaves layers that are already comfy.ops alone)
    formats.register_writer("gguf_q8_0", write)    # convert.py's hook: (plan: convert.PartPlan, target: Path,
                                 # progress_for) -> None; writes `target` (a temp name in the final folder;
                                 # convert publishes it); progress_for(total, part) -> bar with .update(n)

`TensorReader.read(key, dtype)` returns the tensor as the layer keeps it (fp8 stays fp8, a GGUF quant stays a
GGMLTensor); `dtype` asks plain float tensors (norms, biases) to arrive in the compute dtype, converted one
tensor at a time as they are read. A GGUF source's `config` / `files` come from the same ``glmimage.*`` keys,
stored as GGUF string fields of the same names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import GlmImageInputError

PARTS = ("ar", "dit", "vae", "glyph")
PART_NAMES = {"ar": "AR model", "dit": "DiT", "vae": "VAE", "glyph": "glyph encoder"}
#: The hub folder of each part (and, for the text files a part carries, the folders they come from).
HUB_FOLDERS = {"ar": "vision_language_encoder", "dit": "transformer", "vae": "vae", "glyph": "text_encoder"}

META_VERSION, META_PART, META_CONFIG, META_FILES, META_STORAGE = (
    "glmimage.format_version", "glmimage.part", "glmimage.config", "glmimage.files", "glmimage.storage")
FORMAT_VERSION = "1"
PLAIN_STORAGE = {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}
FP8_STORAGE = {"F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}
#: Storages kept as they are, never rounded to a `weight_dtype` (the loaders accept only `default` for them).
NON_FP8_STORED = ("gguf",)


@dataclass(frozen=True)
class WeightSource:
    """One weights path as the loaders see it (nothing but headers read)."""

    path: Path
    container: str  # "hub" | "folder" | "safetensors" | "gguf" | another registered container
    part: str | None  # "ar" | "dit" | "vae" | "glyph"; None for a hub folder (it holds them all)
    storage: str = "bf16"
    convention: str | None = None  # fp8: "comfy_quant" | "scaled_fp8"
    config: dict = field(default_factory=dict, compare=False)
    files: dict = field(default_factory=dict, compare=False)  # name -> text (tokenizer.json, chat_template...)
    size: int = 0  # bytes on disk
    header: dict = field(default_factory=dict, compare=False, repr=False)  # safetensors: key -> info

    @property
    def is_file(self) -> bool:
        return self.container not in ("hub", "folder")

    def describe(self) -> str:
        what = PART_NAMES.get(self.part or "", "GLM-Image")
        fmt = self.storage + (f" ({self.convention})" if self.convention else "")
        return f"{what} {self.container} {self.path.name!r}, {fmt}, {self.size / 2**30:.2f} GiB"


class Foreign(GlmImageInputError):
    """A path that is not the GLM-Image part asked for; the message names it and says what it looks like."""

    def __init__(self, path: Path | str, what: str, want: str | None = None, hint: str = "") -> None:
        wanted = f"GLM-Image's {PART_NAMES[want]}" if want else "a GLM-Image part"
        super().__init__(f"{str(path)!r} is not {wanted}: it looks like {what}.{(' ' + hint) if hint else ''}")
        self.path, self.what, self.want, self.hint = Path(path), what, want, hint


@dataclass(frozen=True)
class Container:
    name: str
    suffixes: tuple[str, ...]
    sniff: Callable[[bytes], bool]  # the file's first 16 bytes -> is it mine
    inspect: Callable[[Path], WeightSource]
    open: Callable[[WeightSource], object]  # -> TensorReader


_CONTAINERS: dict[str, Container] = {}
_LAYER_HOOKS: dict[str, Callable] = {}
WRITERS: dict[str, Callable] = {}


def register_container(container: Container) -> None:
    _CONTAINERS[container.name] = container


def register_layers(storage_prefix: str, hook: Callable) -> None:
    """`hook(model, operations) -> CastSummary` for sources whose storage starts with `storage_prefix`."""
    _LAYER_HOOKS[storage_prefix] = hook


def layer_hook(storage: str) -> Callable | None:
    return next((hook for prefix, hook in _LAYER_HOOKS.items() if storage.startswith(prefix)), None)


def register_writer(name: str, writer: Callable) -> None:
    """A `convert` output format (`--format name`) written by another module (see convert.py)."""
    WRITERS[name] = writer


def weight_suffixes() -> tuple[str, ...]:
    return (".safetensors", *(s for c in _CONTAINERS.values() for s in c.suffixes))


def inspect(path: str | Path, want: str | None = None) -> WeightSource:
    """What `path` holds, from headers and metadata only; `want` (a part) refuses every other part."""
    path = Path(path)
    if not path.exists():
        raise GlmImageInputError(f"weights {str(path)!r} do not exist")
    try:
        source = _inspect(path, want)
    except Foreign as err:
        if want is None or err.want is not None:
            raise
        raise Foreign(err.path, err.what, want, err.hint) from err.__cause__
    if want is not None and source.part not in (None, want):
        raise Foreign(path, f"GLM-Image's {PART_NAMES.get(source.part, source.part)}", want,
                      f"Load it with the {PART_NAMES.get(source.part, source.part)} loader.")
    return source


def _inspect(path: Path, want: str | None) -> WeightSource:
    if path.is_dir():
        source = _inspect_folder(path)
    else:
        with path.open("rb") as handle:
            head = handle.read(16)
        container = next((c for c in _CONTAINERS.values() if c.sniff(head)), None)
        if container is not None:
            source = container.inspect(path)
        elif path.suffix.lower() == ".safetensors":
            source = _inspect_safetensors(path)
        else:
            raise Foreign(path, _file_kind(path, head), want,
                          "Only .safetensors files (and folders of them) are read, never pickles.")
    return source


def open_tensors(source: WeightSource):
    """A `TensorReader` over `source` (a file, or one part's folder); close it when done (it is a context manager)."""
    from .tensor_reader import SafetensorsReader

    if source.container in _CONTAINERS:
        return _CONTAINERS[source.container].open(source)
    if source.container == "hub":
        raise GlmImageInputError(f"{str(source.path)!r} holds every part: open one part's folder")
    files = sorted(source.path.glob("*.safetensors")) if source.container == "folder" else [source.path]
    return SafetensorsReader(files)


def _file_kind(path: Path, head: bytes) -> str:
    if head[:4] == b"GGUF":
        return "a GGUF file, and no GGUF reader is installed"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "a pickle checkpoint (.ckpt / .pt / .bin)"
    return f"a {path.suffix or 'extensionless'} file of unknown kind"


def _inspect_folder(path: Path) -> WeightSource:
    if (path / "model_index.json").is_file() or any((path / sub).is_dir() for sub in HUB_FOLDERS.values()):
        return WeightSource(path=path, container="hub", part=None)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise GlmImageInputError(f"folder {str(path)!r} has no config.json and no model_index.json: not a GLM-Image "
                                 "folder (the zai-org/GLM-Image download, or one of its part folders)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GlmImageInputError(f"{str(config_file)!r} is not readable JSON: {err}") from err
    part = part_of_config(config)
    if part is None:
        raise Foreign(path, f"a {config.get('model_type') or config.get('_class_name') or 'different'} model")
    from .files import check_safetensors, checkpoint_dtype

    files = check_safetensors(path, HUB_FOLDERS[part])
    dtype = checkpoint_dtype(path)
    storage = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(str(dtype), "bf16")
    return WeightSource(path=path, container="folder", part=part, storage=storage, config=config,
                        size=sum(f.stat().st_size for f in files))


def part_of_config(config: dict) -> str | None:
    """The part a config.json describes, or None when it is another model's."""
    if config.get("model_type") == "glm_image":
        return "ar"
    name = config.get("_class_name")
    if name == "GlmImageTransformer2DModel":
        return "dit"
    if name == "AutoencoderKL" and config.get("latent_channels") == 16 and "latents_mean" in config:
        return "vae"
    if config.get("model_type") in ("t5", "umt5") and "T5EncoderModel" in config.get("architectures", ["T5EncoderModel"]):
        return "glyph"
    return None


def _inspect_safetensors(path: Path) -> WeightSource:
    from .files import BadHeader, safetensors_header

    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            header, raw = safetensors_header(handle, size)
    except BadHeader as err:
        raise Foreign(path, f"a truncated or damaged download (its header is unreadable: {err})",
                      hint="Download or convert it again.") from err
    if not isinstance(header, dict):
        raise Foreign(path, "a damaged file (its header is not a table)", hint="Download or convert it again.")
    metadata = header.pop("__metadata__", None) or {}
    try:
        end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError) as err:
        raise Foreign(path, "a damaged file (malformed header)", hint="Download or convert it again.") from err
    if len(raw) + end != size:
        raise Foreign(path, f"a truncated download ({size} bytes where its header needs {len(raw) + end})",
                      hint="Download or convert it again.")
    part = metadata.get(META_PART)
    if part not in PARTS:
        raise Foreign(path, looks_like(header, metadata),
                      hint="GLM-Image's single files carry 'glmimage.part' in their metadata: make them with "
                           "'python -m glmimage_core convert' or the 'Save GLM-Image checkpoint' node.")
    try:
        config = json.loads(metadata.get(META_CONFIG, "{}"))
        files = json.loads(metadata.get(META_FILES, "{}"))
    except ValueError as err:
        raise Foreign(path, f"a GLM-Image {PART_NAMES[part]} with damaged metadata ({err})",
                      hint="Convert it again.") from err
    from .fp8 import storage_of

    storage, convention = storage_of(header, metadata)
    return WeightSource(path=path, container="safetensors", part=part, storage=storage, convention=convention,
                        config=config, files=files, size=size, header=header)


def looks_like(header: dict, metadata: dict | None = None) -> str:
    """What a safetensors file without GLM-Image's metadata is, from its tensor names and shapes."""
    keys = list(header)
    has = lambda *parts: any(all(p in k for p in parts) for k in keys)  # noqa: E731
    shape = lambda suffix: next((header[k].get("shape") for k in keys if k.endswith(suffix)), None)  # noqa: E731
    if has("lora_A") or has("lora_B") or has("lora_up") or has("lora_down") or has(".hada_"):
        return "a LoRA (load it with a LoRA loader)"
    if has("double_blocks.") and has("single_blocks."):
        return "a Flux DiT"
    if has("joint_blocks."):
        return "an SD3 DiT"
    if has("img_mlp") or has("txt_mlp"):
        return "a Qwen-Image DiT"
    if has("noise_refiner") or has("context_refiner"):
        return "a Z-Image / Lumina DiT"
    if has("input_blocks.") and has("output_blocks."):
        return "an SDXL checkpoint" if has("conditioner.embedders.1") or has("label_emb") else "an SD UNet checkpoint"
    if has("blocks.", "cross_attn") and has("patch_embedding"):
        return "a Wan video DiT"
    if has("transformer_blocks.") and has("glyph_projector"):
        return "a GLM-Image DiT without its config (convert it from the hub folder to get one)"
    if has("vision_language_encoder") or has("vqmodel"):
        return "a GLM-Image AR model without its config and tokenizer (convert it from the hub folder)"
    if has("encoder.") and has("decoder.") and (has("conv_in") or has("quant_conv")):
        conv = shape("encoder.conv_out.weight")
        channels = conv[0] // 2 if conv else None
        if channels == 4:
            return "an SD / SDXL VAE (4 latent channels; GLM-Image's has 16)"
        return f"a VAE with {channels} latent channels of another model (Flux's or SD3's?)"
    if has("visual.") and has("layers.", "self_attn"):
        return "a Qwen2.5-VL text encoder" if has("visual.blocks") else "a vision-language model"
    if has("layers.", "self_attn.q_proj") or has("embed_tokens"):
        return "an LLM text encoder (Qwen / Llama / Gemma...)"
    if has("encoder.block.", "SelfAttention"):
        return "a T5 text encoder of another model (GLM-Image's glyph encoder is a ByT5 with config metadata)"
    if has("text_model.encoder.layers"):
        return "a CLIP text encoder"
    if not keys:
        return "an empty safetensors file"
    return f"a safetensors file of another model ({len(keys)} tensors, e.g. {keys[0]!r})"
