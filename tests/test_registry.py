"""The Comfy Registry's own checks, run offline: what `comfy node publish` would refuse or warn about.

Sources (read Aug 2026):
- Comfy-Org/comfy-cli, comfy_cli/registry/config_parser.py (`extract_node_configuration`,
  `validate_and_extract_os_classifiers`, `validate_and_extract_accelerator_classifiers`,
  `validate_version`) and comfy_cli/command/custom_nodes/command.py (`validate_node_for_publishing`:
  an empty `project.version` is an error; then `python -m ruff check . --select S102,S307,E702`,
  "we will soon disable exec and eval, and multiple statements in a single line"), and
  comfy_cli/file_utils.py (`zip_files`: git-tracked files minus `.comfyignore`, gitwildmatch).
- https://docs.comfy.org/registry/specifications: [project] name (required: < 100 characters,
  letters, digits, '-', '_', '.', no two special characters in a row, starting with a letter) and
  version (required, X.Y.Z); [project.urls] Repository (required); [tool.comfy] PublisherId
  (required), DisplayName, Icon (SVG/PNG/JPG/GIF, at most 400 x 400 px, square), requires-comfyui.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GITHUB_RAW = "https://raw.githubusercontent.com/"

# comfy-cli's accepted values (config_parser.py)
OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                "GPU :: Apple Metal"}
VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_project_fields_the_registry_requires(pyproject):
    project = pyproject["project"]
    name = project["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), name
    assert not re.search(r"[._-]{2}", name), f"{name}: two special characters in a row"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), project["version"]
    assert project["description"].strip()
    assert project["urls"]["Repository"].startswith("https://github.com/")
    license_ = project["license"]
    assert isinstance(license_, dict) and (license_.get("file") or license_.get("text")), \
        'license must be {file = "LICENSE"} or {text = "..."} (comfy-cli warns on anything else)'
    assert license_.get("text", "Apache-2.0") == "Apache-2.0"


def test_license_file_is_the_full_apache_text():
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190  # not a stub


def test_classifiers_are_ones_the_registry_reads(pyproject):
    classifiers = pyproject["project"]["classifiers"]
    os_values = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")]
    assert os_values and all(v.startswith(OS_PREFIXES) for v in os_values), os_values
    assert accelerators and set(accelerators) <= ACCELERATORS, accelerators
    assert "License :: OSI Approved :: Apache Software License" in classifiers


def test_tool_comfy_fields_and_the_icon(pyproject):
    comfy = pyproject["tool"]["comfy"]
    assert comfy["PublisherId"].strip() and comfy["DisplayName"].strip()
    requires = comfy["requires-comfyui"]
    assert all(VERSION_PART.match(part.strip()) for part in requires.split(",")), requires
    assert isinstance(comfy.get("includes", []), list)
    # The Icon is a URL into this repository's main branch: the file it names must be here.
    repo_path = pyproject["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"{GITHUB_RAW}{repo_path}/main/"
    assert comfy["Icon"].startswith(prefix), f"Icon should point at {prefix}<file in this repo>"
    icon = REPO / comfy["Icon"].removeprefix(prefix)
    with Image.open(icon) as picture:
        assert picture.format in ("PNG", "JPEG", "GIF")
        assert picture.width == picture.height <= 400, f"{icon.name} is {picture.size}: square, <= 400 px"


def test_icon_is_what_its_script_draws(tmp_path):
    """docs/icon.png comes from scripts/make_icon.py: re-drawing it gives the same picture (up to one
    step of rounding per channel, which another BLAS may shift)."""
    out = tmp_path / "icon.png"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_icon.py"), "--out", str(out)], check=True,
                   capture_output=True, cwd=REPO)
    with Image.open(out) as fresh, Image.open(REPO / "docs" / "icon.png") as committed:
        assert fresh.size == committed.size
        diff = np.abs(np.asarray(fresh.convert("RGB"), dtype=int) - np.asarray(committed.convert("RGB"), dtype=int))
        assert diff.max() <= 1, "docs/icon.png is stale: run scripts/make_icon.py"


def _ignored_by_comfyignore(paths: list[str], tmp_path: Path) -> set[str]:
    """Which paths `.comfyignore` leaves out, decided by git's own gitwildmatch (comfy-cli uses
    pathspec's "gitwildmatch", which follows it) in a scratch repository."""
    git = shutil.which("git")
    assert git, "git is needed to evaluate .comfyignore (as comfy-cli's packer does)"
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True)
    result = subprocess.run(
        [git, "-C", str(tmp_path), "-c", f"core.excludesFile={REPO / '.comfyignore'}", "check-ignore",
         "--no-index", "-v", "-n", "--stdin"], input="\n".join(paths) + "\n", capture_output=True, text=True)
    assert result.returncode in (0, 1), result.stderr
    ignored = set()
    for line in result.stdout.splitlines():  # "<source>:<line>:<pattern>\t<path>", "::\t<path>" if none
        match, path = line.split("\t", 1)
        pattern = re.match(r"^(.*?):(\d*):(.*)$", match).group(3)
        if pattern and not pattern.startswith("!"):
            ignored.add(path)
    return ignored


def test_comfyignore_ships_the_pack_and_leaves_out_development_files(tmp_path):
    def files(pattern: str) -> list[str]:
        return sorted(str(p.relative_to(REPO)) for p in REPO.glob(pattern) if p.is_file())

    needed = ["__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md"]
    needed += files("nodes/*.py") + files("glmimage_core/*.py") + files("example_workflows/*")
    needed += files("glmimage_serve/*.py")  # the AR server: users run it from the pack folder (README)
    needed += files("docs/*.png")  # the README's pictures and the icon
    development = files("tests/**/*.py") + files("bench/*") + files("scripts/*") + files(".ci/*")
    assert len(needed) > 20 and len(development) > 10
    ignored = _ignored_by_comfyignore(needed + development, tmp_path)
    assert not ignored & set(needed), f"needed by users but left out: {sorted(ignored & set(needed))}"
    assert set(development) <= ignored, f"would ship: {sorted(set(development) - ignored)}"


def _ruff() -> str:
    here = Path(sys.executable).parent / ("ruff.exe" if os.name == "nt" else "ruff")
    found = str(here) if here.is_file() else shutil.which("ruff")
    if not found:
        pytest.fail(f"ruff is not installed next to {sys.executable} nor on PATH: the Registry's security scan "
                    "cannot run. scripts/setup_env.sh installs it (GLMIMAGE_SETUP_FORCE=1 to redo an existing "
                    ".venv), or: pip install ruff", pytrace=False)
    return found


def test_registry_security_scan_is_clean():
    """The scan `comfy node publish` runs over the repository (exec, eval, `a; b` on one line).
    `.cache` is excluded as git does (.gitignore) for runs outside a git checkout."""
    result = subprocess.run([_ruff(), "check", ".", "-q", "--no-cache", "--select", "S102,S307,E702",
                             "--extend-exclude", ".cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_sources_are_cp1252_encodable():
    """Windows tools that read a node pack's files with the default code page (cp1252), e.g. comfy-test's
    SYNTAX level, choke on characters outside it: non-Latin text in sources is written as \\u escapes."""
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.toml", "*.txt", "*.sh", "*.cfg", "*.ini"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked, "git ls-files found no sources"
    bad = []
    for name in tracked:
        text = (REPO / name).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            try:
                line.encode("cp1252")
            except UnicodeEncodeError as err:
                bad.append(f"{name}:{number}: {line[err.start:err.end]!r}")
    assert not bad, "not encodable in cp1252 (write \\uXXXX escapes):\n" + "\n".join(bad)
