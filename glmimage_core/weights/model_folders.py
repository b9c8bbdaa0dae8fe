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


#: ComfyUI's model folders whose files each part's loader lists, next to models/glm_image/ (README: "Weights").
PART_FOLDERS = {"ar": ("text_encoders",), "dit": ("diffusion_models",), "vae": ("vae",), "glyph": ("text_encoders",)}


def kind_roots(kind: str) -> list[Path]:
    """The host's folders of `kind` (inside ComfyUI: diffusion_models also finds the legacy unet/ folder); none
    outside ComfyUI."""
    return [Path(p) for p in host().model_folders(kind)]


def output_root(kind: str) -> Path | None:
    """Where a new file of `kind` goes: ComfyUI's folder of that name (0.3.75 lists the legacy unet/ before
    diffusion_models/), else its first folder of that kind."""
    roots = kind_roots(kind)
    return next((root for root in roots if root.name == kind), roots[0] if roots else None)


def part_roots(part: str | None) -> list[Path]:
    """Where the files of `part` (every part when None) are looked for: models/glm_image/ first."""
    kinds = PART_FOLDERS.get(part, ()) if part else tuple(k for ks in PART_FOLDERS.values() for k in ks)
    return search_roots() + [root for kind in dict.fromkeys(kinds) for root in kind_roots(kind)]


def list_weight_files(part: str) -> list[str]:
    """Single weight files for `part`'s loader: names relative to their folder, from models/glm_image/ (outside
    model folders) and the part's ComfyUI folders; what each file holds is checked when it is loaded."""
    from .formats import weight_suffixes

    suffixes = weight_suffixes()
    names: set[str] = set()
    for root in part_roots(part):
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_model_folder(Path(folder) / d))
            for file in files:
                if file.lower().endswith(suffixes) and not file.startswith("."):
                    names.add((Path(folder) / file).relative_to(root).as_posix())
    return sorted(names)


def is_weight_file(name: str) -> bool:
    """Whether a loader's `model` choice names a single file (not a folder)."""
    return Path(resolve_model_path(name)).is_file()


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
    if candidate.is_file():
        return str(candidate.resolve())
    for root in search_roots():
        if (root / name_or_path).is_dir():
            return str((root / name_or_path).resolve())
    for root in part_roots(None):
        if (root / name_or_path).is_file():
            return str((root / name_or_path).resolve())
    return name_or_path
