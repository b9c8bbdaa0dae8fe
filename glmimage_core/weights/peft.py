"""PEFT's LoRA rules, read from an adapter's `LoraConfig` (its adapter_config.json): the scale of each module.

PEFT scales a LoRA's update `B @ A` by `lora_alpha / r` (`use_rslora`: `lora_alpha / sqrt(r)`),
where `r` and `lora_alpha` can differ per module (`rank_pattern`, `alpha_pattern`). The first
pattern that matches the end of the module's name (whole dotted parts, the pattern read as a
regular expression) applies: peft's `get_pattern_key`. These rules are PEFT's, not a model's, so
they live here once for every LoRA the pack reads.
"""

from __future__ import annotations

import math
import re

from ..errors import GlmImageInputError

#: PEFT's default lora_alpha when a config leaves it out (LoraConfig.lora_alpha).
DEFAULT_ALPHA = 8


def pattern_value(patterns: dict, module: str):
    """The value of the first pattern of `patterns` that matches the end of `module`, or None (peft 0.21's
    `get_pattern_key`: `re.match(rf"(.*\\.)?({pattern})$", module)`)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def _number(value, what: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
        raise GlmImageInputError(f"{name}: {what} in its adapter config is {value!r}; it must be a non-zero "
                                 "number (the value the LoRA was trained with)")
    return float(value)


def _patterns(config: dict, key: str, name: str) -> dict:
    patterns = config.get(key) or {}
    if not isinstance(patterns, dict):
        raise GlmImageInputError(f"{name}: {key} in its adapter config must map module names to numbers, "
                                 f"not {patterns!r}")
    return patterns


def module_rank(config: dict, module: str, name: str = "lora") -> int | None:
    """The rank PEFT gives `module` (rank_pattern, else r), or None when the config names none."""
    value = pattern_value(_patterns(config, "rank_pattern", name), module)
    if value is None:
        value = config.get("r")
    return None if value is None else int(_number(value, f"the rank of {module}", name))


def module_scale(config: dict, module: str, rank: int, name: str = "lora") -> float:
    """PEFT's scale of `module`'s update with `rank`: alpha (alpha_pattern, else lora_alpha, else PEFT's
    default 8) / rank, or / sqrt(rank) with use_rslora."""
    alpha = pattern_value(_patterns(config, "alpha_pattern", name), module)
    if alpha is None:
        alpha = config.get("lora_alpha", DEFAULT_ALPHA)
    alpha = _number(alpha, f"the alpha of {module}", name)
    return alpha / math.sqrt(rank) if config.get("use_rslora", False) else alpha / rank
