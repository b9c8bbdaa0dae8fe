"""Rebuild the device image's Python here, for the GPU check's dry run (no GPU, no device machine needed).

    .venv/bin/python scripts/gpu/dry_image.py DEST   # prints DEST/venv/bin/python

Why: the device machine has no network, so what the bundle misses shows up there only as a failed (and
paid-for) run. The dry run therefore imports the pack and starts ComfyUI 0.33.0 in a Python that holds
only what the device image holds plus the bundle. That Python is a fresh venv (no system site-packages)
whose one `.pth` line points at DEST/image-site, a folder that holds, as symlinks into .venv-comfy033
(the same torch 2.11.0 as the device's, so nothing of gigabytes is downloaded), exactly the packages of
scripts/gpu/device_image_packages.txt, and the device's own versions of the packages whose version
matters to the pack: transformers 5.17.0 (which the bundle must override: PYTHONPATH comes before .pth
entries) and huggingface_hub 1.33.0 (+ httpx, which that venv lacks). Those wheels come from the package
index (pure python, ~15 MB), see DEVICE_VERSIONS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE_VENV = REPO / ".venv-comfy033"
PACKAGES = Path(__file__).with_name("device_image_packages.txt")
#: Taken from the package index, not from .venv-comfy033: the device's versions where that venv's differ and
#: the pack could notice (transformers, huggingface_hub), and image packages that venv lacks but the stack
#: imports (transformers 5.17 / huggingface_hub 1.x import httpx). Pure-python wheels, ~15 MB together.
DEVICE_VERSIONS = {"transformers": "5.17.0", "huggingface-hub": "1.33.0", "httpx": "0.28.1", "httpcore": "1.0.9",
                   "anyio": "4.16.0", "h11": "0.16.0"}


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def device_packages() -> set[str]:
    return {norm(line.strip()) for line in PACKAGES.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def source_site() -> Path:
    found = sorted(SOURCE_VENV.glob("lib/python3.*/site-packages"))
    if not found:
        raise SystemExit(f"no site-packages under {SOURCE_VENV}: run scripts/setup_comfy033.sh first")
    return found[0]


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The first path parts a distribution installed (packages, modules, .libs folders, its dist-info)."""
    out = set()
    for f in dist.files or ():
        first = f.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            out.add(first)
    return out


def build(dest: Path) -> Path:
    site = source_site()
    image = dest / "image-site"
    wanted = device_packages()
    if image.exists():
        subprocess.run(["rm", "-rf", str(image)], check=True)
    image.mkdir(parents=True)
    linked = []
    for dist in metadata.distributions(path=[str(site)]):
        name = norm(dist.metadata["Name"])
        if name not in wanted or name in DEVICE_VERSIONS:
            continue
        for entry in top_level_entries(dist):
            target = site / entry
            if target.exists() and not (image / entry).exists():
                (image / entry).symlink_to(target)
        linked.append(name)
    wheels = dest / "device-wheels"
    pins = [f"{n}=={v}" for n, v in DEVICE_VERSIONS.items()]
    def pinned() -> list[Path]:
        return [w for n, v in DEVICE_VERSIONS.items() for w in wheels.glob(f"{n.replace('-', '_')}-{v}-*.whl")]

    if len(pinned()) != len(DEVICE_VERSIONS):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(wheels), *pins], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
                    "--target", str(image), *map(str, sorted(pinned()))], check=True)
    venv = dest / "venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_site = next(venv.glob("lib/python3.*/site-packages"))
    (venv_site / "device_image.pth").write_text(str(image) + "\n")
    missing = sorted(wanted - {norm(n) for n in linked} - set(DEVICE_VERSIONS))
    (dest / "image-missing.txt").write_text("\n".join(missing) + "\n")
    return venv / "bin" / "python"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(build(Path(sys.argv[1]).resolve()))
    os.sys.stdout.flush()
