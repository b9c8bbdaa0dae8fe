"""PEFT LoRAs for the AR model: reading an adapter, naming its layers in the AR model, PEFT's scale per layer.

The LoRAs people train for GLM-Image adapt its AR model (diffusers' `vision_language_encoder`, a
transformers `GlmImageForConditionalGeneration`) with PEFT, typically r 8 / lora_alpha 16 on the
text model's q/k/v/o projections. PEFT saves them as a folder, `adapter_model.safetensors` +
`adapter_config.json`, with keys such as
`base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight`: PEFT's wrapper
(`base_model.model.`), then the module's name in GlmImageForConditionalGeneration
(`model.language_model.layers.0.self_attn.q_proj`; transformers 5.23). One safetensors file with
the config as JSON in its metadata (`adapter_config`, as `write_single_file` writes it, or
diffusers' `lora_adapter_metadata`) is read the same way.

`read_ar_lora` returns each adapted layer's A, B and PEFT's scale (weights.peft), after checking
them against the loaded model: an adapter whose layers the AR model does not have (a DiT LoRA,
another model's), or has with other shapes, is refused with the file and what it targets named.
Applying the update is the host's job (inside ComfyUI: patches on the model's patcher,
glmimage_comfy), so the cached base model is never changed here. No ComfyUI import.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GlmImageInputError
from ..weights.peft import module_rank, module_scale

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Metadata key of a one-file adapter: the JSON of its adapter_config.json (`write_single_file`).
CONFIG_METADATA = "adapter_config"
#: diffusers' metadata key for a LoRA's settings (optionally prefixed per component).
DIFFUSERS_METADATA = "lora_adapter_metadata"
COMPONENT = "vision_language_encoder"

_PREFIXES = ("base_model.model.", f"{COMPONENT}.")  # PEFT's wrapper, then diffusers' component name
_ROLES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_A.default.weight": "down",
          ".lora_B.default.weight": "up"}
#: Parts of keys (and config options) PEFT writes for adapters that are more than W + scale * B @ A.
_NOT_PLAIN = {"lora_magnitude_vector": "DoRA (use_dora)", "lora_embedding_": "LoRA on embedding tables",
              "lora_B.bias": "a LoRA bias (lora_bias)", "modules_to_save": "whole trained layers (modules_to_save)",
              "trainable_tokens": "trained token rows (trainable_token_indices)"}
_NOT_PLAIN_OPTIONS = {"use_dora": "DoRA (use_dora)", "lora_bias": "a LoRA bias (lora_bias)",
                      "alora_invocation_tokens": "an activated LoRA (alora_invocation_tokens)"}


@dataclass(frozen=True)
class LoraLayer:
    """One adapted Linear: its name in the AR model, A [r, in], B [out, r] and PEFT's scale."""

    module: str
    down: torch.Tensor
    up: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self) -> torch.Tensor:
        """scale * B @ A in fp32: what PEFT's merge adds to the weight at strength 1."""
        return self.scale * (self.up.float() @ self.down.float())


@dataclass(frozen=True)
class ARLora:
    """A PEFT LoRA checked against an AR model: `source` the file read, `layers` by module name."""

    source: str
    layers: tuple[LoraLayer, ...]

    def describe(self) -> str:
        kinds = Counter(layer.module.rpartition(".")[2] for layer in self.layers)
        ranks = sorted({layer.rank for layer in self.layers})
        scales = sorted({round(layer.scale, 6) for layer in self.layers})
        return (f"{len(self.layers)} layers ({', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}), "
                f"rank {'/'.join(map(str, ranks))}, scale {'/'.join(f'{s:g}' for s in scales)}")


def adapter_files(path: str | Path, name: str = "lora") -> tuple[Path, Path | None]:
    """(the weights file, the adapter_config.json beside it or None) for a folder or a file."""
    path = Path(path)
    if path.is_dir():
        weights = path / ADAPTER_WEIGHTS
        if not weights.is_file():
            found = sorted(p.name for p in path.glob("adapter_model.*"))
            hint = f" (it has {found[0]}: only safetensors are read, never pickle)" if found else ""
            raise GlmImageInputError(f"{name}: folder {str(path)!r} has no {ADAPTER_WEIGHTS}{hint}")
        path = weights
    if not path.is_file():
        raise GlmImageInputError(f"{name}: {str(path)!r} does not exist")
    if path.suffix != ".safetensors":
        raise GlmImageInputError(f"{name}: {str(path)!r} is not a .safetensors file; only safetensors are read")
    config = path.parent / ADAPTER_CONFIG
    return path, (config if config.is_file() else None)


def _json(text: str, what: str, name: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise GlmImageInputError(f"{name}: {what} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise GlmImageInputError(f"{name}: {what} is a {type(value).__name__}, not PEFT's object of settings")
    return value


def config_from_metadata(metadata: dict | None, name: str = "lora") -> dict | None:
    """A one-file adapter's LoraConfig from its safetensors metadata, or None when it has none."""
    metadata = metadata or {}
    if metadata.get(CONFIG_METADATA):
        return _json(metadata[CONFIG_METADATA], f"its '{CONFIG_METADATA}' metadata", name)
    if not metadata.get(DIFFUSERS_METADATA):
        return None
    config = _json(metadata[DIFFUSERS_METADATA], f"its '{DIFFUSERS_METADATA}' metadata", name)
    scoped = {k[len(COMPONENT) + 1:]: v for k, v in config.items() if k.startswith(COMPONENT + ".")}
    return scoped or config


def read_adapter(path: str | Path, name: str = "lora") -> tuple[dict[str, torch.Tensor], dict | None, Path]:
    """(tensors, adapter config or None, the weights file) of a PEFT adapter folder or one-file adapter."""
    from safetensors import SafetensorError, safe_open

    weights, config_file = adapter_files(path, name)
    try:
        with safe_open(str(weights), "pt", device="cpu") as f:
            metadata = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise GlmImageInputError(f"{name}: {str(weights)!r} is not a readable safetensors file ({err}); "
                                 "download it again") from err
    if config_file is not None:
        config = _json(config_file.read_text(encoding="utf-8"), repr(str(config_file)), name)
    else:
        config = config_from_metadata(metadata, name)
    return tensors, config, weights


def _module_of(key: str) -> tuple[str, str] | None:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    for suffix, role in _ROLES.items():
        if key.endswith(suffix):
            return key[:-len(suffix)], role
    return None


def is_ar_lora(keys) -> bool:
    """Whether state-dict `keys` are a PEFT LoRA of the AR model (its text or vision model's layers)."""
    for key in keys:
        found = _module_of(key)
        if found is not None and found[0].startswith(("model.language_model.", "model.visual.")):
            return True
    return False


def _what_it_targets(modules: list[str], keys: list[str], config: dict | None) -> str:
    joined = " ".join(modules or keys)
    if "transformer_blocks" in joined or any(k.startswith("transformer.") for k in keys):
        what = "GLM-Image's DiT (the diffusion decoder): apply it to the MODEL with 'Load GLM-Image LoRA'"
    elif "lora_unet_" in joined or "lora_te" in joined or ".lora_down." in joined:
        what = "an image model in the kohya format (lora_down / lora_up keys), not a PEFT adapter of GLM-Image's AR model"
    else:
        what = "layers that the GLM-Image AR model does not have"
    examples = ", ".join(repr(m) for m in (modules or keys)[:2])
    config = config or {}
    base = config.get("base_model_name_or_path")
    base_class = (config.get("auto_mapping") or {}).get("base_model_class")
    said = f"; its config names the base model {base!r}" if base else ""
    said += f" ({base_class})" if base_class else ""
    return f"{what} (e.g. {examples}){said}"


def _check_config(config: dict | None, source: str, name: str) -> dict:
    if config is None:
        raise GlmImageInputError(
            f"{name}: {source!r} has no adapter config, so its scale (lora_alpha / r) is unknown: keep the "
            f"{ADAPTER_CONFIG} the trainer wrote next to it (a folder with {ADAPTER_WEIGHTS}), or use a one-file "
            f"adapter with the config in its '{CONFIG_METADATA}' metadata")
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise GlmImageInputError(f"{name}: {source!r} is a PEFT {kind} adapter; only LoRA adapters (peft_type "
                                 "LORA) can be applied to the AR model")
    for option, what in _NOT_PLAIN_OPTIONS.items():
        if config.get(option):
            raise GlmImageInputError(f"{name}: {source!r} uses {what}, which this loader does not apply; only "
                                     "plain LoRA (W + scale x B @ A) is supported")
    return config


def read_ar_lora(path: str | Path, model: torch.nn.Module, name: str = "lora") -> ARLora:
    """The adapter at `path` (folder or one file) checked against the AR `model`, with PEFT's scale per layer.

    Raises GlmImageInputError, naming the file, when it is not a PEFT LoRA of this AR model."""
    tensors, config, weights = read_adapter(path, name)
    source = str(weights)
    for key in tensors:
        for part, what in _NOT_PLAIN.items():
            if part in key:
                raise GlmImageInputError(f"{name}: {source!r} holds {what} (key {key!r}), which this loader "
                                         "does not apply; only plain LoRA layers (lora_A / lora_B) are supported")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for key, tensor in tensors.items():
        found = _module_of(key)
        if found is None:
            other.append(key)
        else:
            pairs.setdefault(found[0], {})[found[1]] = tensor
    modules = dict(model.named_modules())
    foreign = [m for m in pairs if not isinstance(modules.get(m), torch.nn.Linear)]
    if not pairs or other or foreign:
        raise GlmImageInputError(f"{name}: {source!r} is not a PEFT LoRA of the GLM-Image AR model: it targets "
                                 f"{_what_it_targets(foreign, other or list(tensors), config)}")
    config = _check_config(config, source, name)
    layers = []
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"down", "up"}:
            missing = "lora_B" if "up" not in pair else "lora_A"
            raise GlmImageInputError(f"{name}: {source!r} has no {missing} weight for {module}: the file is incomplete")
        down, up = pair["down"], pair["up"]
        weight = modules[module].weight
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0] \
                or (up.shape[0], down.shape[1]) != tuple(weight.shape):
            base = (config.get("base_model_name_or_path") or "not named")
            raise GlmImageInputError(
                f"{name}: {source!r} was trained for another model: {module} is {list(weight.shape)} in this "
                f"GLM-Image AR model but the LoRA's update is [{up.shape[0]}, {down.shape[-1]}] (base model in "
                f"its config: {base!r})")
        rank = int(down.shape[0])
        configured = module_rank(config, module, name)
        if configured is not None and configured != rank:
            raise GlmImageInputError(f"{name}: {source!r}: its config gives {module} rank {configured} but its "
                                     f"weights have rank {rank}; the config and the weights do not belong together")
        layers.append(LoraLayer(module, down, up, module_scale(config, module, rank, name)))
    return ARLora(source, tuple(layers))


def write_single_file(folder: str | Path, out: str | Path) -> Path:
    """A PEFT adapter folder as one safetensors file, its adapter_config.json as JSON in the metadata."""
    from safetensors.torch import save_file

    tensors, config, _ = read_adapter(folder, "adapter")
    if config is None:
        raise GlmImageInputError(f"adapter folder {str(folder)!r} has no {ADAPTER_CONFIG}")
    out = Path(out)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out),
              metadata={"format": "pt", CONFIG_METADATA: json.dumps(config)})
    return out


def has_adapter_config(file: Path) -> bool:
    """Whether a safetensors file carries an adapter config in its metadata (a one-file adapter); header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "pt", device="cpu") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError):
        return False
    return CONFIG_METADATA in metadata


def find_adapters(root: Path, is_model_folder, max_depth: int = 3) -> list[str]:
    """Adapters under `root` (relative paths): `adapter_model.safetensors` beside an adapter_config.json and
    one-file adapters; model folders (`is_model_folder`) are not entered."""
    found: list[str] = []

    def walk(folder: Path, depth: int) -> None:
        for child in sorted(folder.iterdir()):
            if child.is_dir() and depth < max_depth and not is_model_folder(child):
                walk(child, depth + 1)
            elif child.suffix == ".safetensors" and child.is_file():
                paired = child.name == ADAPTER_WEIGHTS and (folder / ADAPTER_CONFIG).is_file()
                if paired or has_adapter_config(child):
                    found.append(child.relative_to(root).as_posix())

    if root.is_dir():
        walk(root, 0)
    return found
