"""Where GLM-Image weights live: ComfyUI's `models/glm_image/`, or a folder named by the user.

Inside ComfyUI the folder is registered with `folder_paths` (so
`extra_model_paths.yaml` can add more); outside it, `GLMIMAGE_MODELS_DIR` or
explicit paths are used.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..memory.host import _comfy_module

FOLDER_NAME = "glm_image"
ENV_MODELS_DIR = "GLMIMAGE_MODELS_DIR"


def register_comfy_folder() -> None:
    """Add `models/glm_image` to ComfyUI's folder_paths (idempotent)."""
    folder_paths = _comfy_module("folder_paths")
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    os.makedirs(default, exist_ok=True)
    if FOLDER_NAME not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER_NAME] = ([default], set())
    elif default not in folder_paths.folder_names_and_paths[FOLDER_NAME][0]:
        folder_paths.add_model_folder_path(FOLDER_NAME, default)


def search_roots() -> list[Path]:
    roots: list[Path] = []
    folder_paths = _comfy_module("folder_paths")
    if folder_paths is not None:
        register_comfy_folder()
        roots += [Path(p) for p in folder_paths.get_folder_paths(FOLDER_NAME)]
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
