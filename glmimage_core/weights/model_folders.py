"""Where GLM-Image weights live: the host's folders for them, or a folder named by the user.

Inside ComfyUI that is `models/glm_image/` (the ComfyUI host registers it with
`folder_paths`, so `extra_model_paths.yaml` can add more); anywhere,
`GLMIMAGE_MODELS_DIR` or explicit paths are used.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..memory.host import host

FOLDER_NAME = "glm_image"
ENV_MODELS_DIR = "GLMIMAGE_MODELS_DIR"


def search_roots() -> list[Path]:
    """The host's folders for GLM-Image models (inside ComfyUI: models/glm_image and extra_model_paths.yaml's),
    then those of GLMIMAGE_MODELS_DIR."""
    roots = [Path(p) for p in host().model_folders(FOLDER_NAME)]
    if os.environ.get(ENV_MODELS_DIR):
        roots += [Path(p) for p in os.environ[ENV_MODELS_DIR].split(os.pathsep) if p]
    return roots


def is_model_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "config.json").is_file() \
        or (path / "transformer").is_dir() or (path / "vision_language_encoder").is_dir()


def list_model_folders() -> list[str]:
    """Names of model folders under the search roots, for a node's dropdown."""
    names: set[str] = set()
    for root in search_roots():
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.is_dir() and is_model_folder(child):
                names.add(child.name)
    return sorted(names)


def resolve_model_path(name_or_path: str) -> str:
    """A dropdown name -> its folder; an existing path as it is; anything else unchanged (a hub id)."""
    if not name_or_path:
        raise ValueError("model is empty: pick a folder under models/glm_image/ or give a path")
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return str(candidate.resolve())
    for root in search_roots():
        if (root / name_or_path).is_dir():
            return str((root / name_or_path).resolve())
    return name_or_path
