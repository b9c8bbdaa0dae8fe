"""Where token files may be read from: ComfyUI's input/, output/ and temp/ folders, and nowhere else.

Names follow ComfyUI's annotated form: 'sub/name.safetensors' lies under input/,
'sub/name.safetensors [output]' under output/ ('[temp]', '[input]' likewise).
ComfyUI's own `folder_paths.get_annotated_filepath` is a bare `os.path.join` on
0.3.75 (it refuses outside paths only from 0.28.0), so the pack checks itself:
the name is resolved with every symlink and '..' followed, and the result must
still lie inside the folder its annotation names. The folders are passed in
(the nodes read them from ComfyUI), so this module needs no ComfyUI.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping

from ..errors import GlmImageInputError
from .files import is_token_file

KINDS = ("input", "output", "temp")
SUFFIX = ".safetensors"
#: The pack's folder under output/ ('Save GLM-Image tokens' writes to glm_image/ by default).
OUTPUT_SUBFOLDER = "glm_image"


def split_annotation(name: str) -> tuple[str, str]:
    """'a/b.safetensors [output]' -> ('a/b.safetensors', 'output'); no annotation means input/."""
    name = name.strip()
    for kind in KINDS:
        tag = f"[{kind}]"
        if name.endswith(tag):
            return name[: -len(tag)].rstrip(), kind
    return name, "input"


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives (Windows)
        return False


def resolve_token_path(name: str, folders: Mapping[str, str], what: str = "file") -> Path:
    """The real path of an annotated name, refused unless it lies inside the folder it names.

    `what` names the node input in the messages (ComfyUI shows them in the editor)."""
    if not isinstance(name, str):
        raise GlmImageInputError(f"{what} must be a file name (text), got {type(name).__name__}")
    relative, kind = split_annotation(name)
    if not relative:
        raise GlmImageInputError(f"{what} is empty: choose a .safetensors token file "
                                 f"(written by 'Save GLM-Image tokens')")
    if "\0" in relative:
        raise GlmImageInputError(f"{what}: {name!r} contains a NUL character")
    root = os.path.realpath(folders[kind])
    target = os.path.realpath(os.path.join(root, relative))
    if not _inside(target, root):
        raise GlmImageInputError(
            f"{what}: {name!r} points outside ComfyUI's {kind} folder (to {target}); token files are read only "
            f"from ComfyUI's input/, output/ and temp/ folders: write 'name.safetensors' for input/ or "
            f"'name.safetensors [output]' for output/")
    return Path(target)


@lru_cache(maxsize=4096)
def _is_token_file(path: str, mtime_ns: int, size: int) -> bool:
    """is_token_file, remembered per file version: ComfyUI asks for the node's inputs (and so for this
    list) several times per queued prompt, and a header need not be read again until the file changes."""
    return is_token_file(path)


def _accept_token_file(path: str) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return _is_token_file(path, stat.st_mtime_ns, stat.st_size)


def _scan(start: str, root: str, accept: Callable[[str], bool], recursive: bool) -> list[str]:
    """'/'-separated names (relative to `start`) of the accepted .safetensors files in `start` (and
    its subfolders if `recursive`) whose real path stays inside `root`, the ComfyUI folder they will
    be resolved against."""
    real_root = os.path.realpath(root)
    found = []
    for folder, subdirs, files in os.walk(start, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if recursive else []
        for file in files:
            path = os.path.join(folder, file)
            if file.endswith(SUFFIX) and _inside(os.path.realpath(path), real_root) and accept(path):
                found.append(os.path.relpath(path, start).replace(os.sep, "/"))
    return sorted(found)


def list_token_files(folders: Mapping[str, str], accept: Callable[[str], bool] = _accept_token_file) -> list[str]:
    """The Load node's dropdown: token files directly in input/ (plain names, as ComfyUI's LoadImage
    lists input/ without its subfolders) and anywhere under output/glm_image/ ('glm_image/... [output]',
    the pack's own folder); judged by their size and header, not their name alone."""
    names = _scan(folders["input"], folders["input"], accept, recursive=False)
    output_folder = os.path.join(folders["output"], OUTPUT_SUBFOLDER)
    names += [f"{OUTPUT_SUBFOLDER}/{name} [output]"
              for name in _scan(output_folder, folders["output"], accept, recursive=True)]
    return names
