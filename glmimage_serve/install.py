"""`python -m glmimage_serve.install`: registers this package as a vLLM-Omni plugin in the running Python.

vLLM-Omni finds out-of-tree pipelines only through the `vllm_omni.general_plugins` entry point (no flag or
environment variable names a module); vLLM's engine-core process (the scheduler) loads only vLLM's own group,
`vllm.general_plugins`, so the entry point is declared in both (see plugin.py for why). This writes, into the
environment's site-packages, a `.pth` that puts the pack's folder on the path and a bare dist-info that
declares the entry point. Run it once per server environment, from any folder, with that environment's
Python (scripts/setup_vllm.sh runs it for the CPU test environment). Standard library only.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
DIST = "glmimage_serve-0.0.0.dist-info"
#: vLLM-Omni's processes (API front, orchestrator, workers) load the first; vLLM's engine core the second.
GROUPS = ("vllm_omni.general_plugins", "vllm.general_plugins")


def install(site: Path | None = None) -> Path:
    site = Path(site or sysconfig.get_paths()["purelib"])
    (site / "glmimage_serve_repo.pth").write_text(f"{PACK}\n")
    dist = site / DIST
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: glmimage-serve\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "".join(f"[{group}]\nglmimage_serve = glmimage_serve.plugin:register\n\n" for group in GROUPS))
    (dist / "RECORD").write_text("")
    return site


if __name__ == "__main__":
    where = install()
    print(f"[glmimage_serve] plugin registered in {where} (pack folder {PACK})", file=sys.stderr)
