"""Options of a loader are that loader's, even when two loaders share one loaded model (the real server)."""

import json
import re
from pathlib import Path

from tests.comfy_harness import node_id, workflow_to_api_prompt

KSAMPLER_WORKFLOW = Path(__file__).resolve().parents[2] / "example_workflows" / "glm_image_ksampler.json"
STREAMING_LINE = re.compile(r"GLM-Image DiT: (\d+) KB of its (\d+) KB kept on .*vram_limit_gb (\d+) KB")


def test_two_dit_loaders_with_different_vram_limits_in_one_graph(comfy_server):
    """One graph, one DiT folder, two 'Load GLM-Image DiT' nodes (limits of 16 KB and 40 KB), each feeding its own
    conditioning and KSampler: the DiT is loaded once, and each sampler streams within its own loader's limit
    (before, the limit was written onto the shared model and the loader that ran last set it for both)."""
    prompt = workflow_to_api_prompt(json.loads(KSAMPLER_WORKFLOW.read_text()), comfy_server.object_info())
    prompt[node_id(prompt, "GLMImageShape")]["inputs"].update(size_from="pixels", width=96, height=128)
    sampler, loader, cond = (node_id(prompt, t) for t in ("KSampler", "GLMImageDiTLoader", "GLMImageConditioning"))
    prompt[sampler]["inputs"]["steps"] = 2
    prompt[loader]["inputs"]["vram_limit_gb"] = 16 / 2**20
    second = {f"9{key}": json.loads(json.dumps(prompt[key])) for key in (loader, cond, sampler)}
    second[f"9{loader}"]["inputs"]["vram_limit_gb"] = 40 / 2**20
    second[f"9{cond}"]["inputs"]["model"] = [f"9{loader}", 0]
    for name in ("model", "positive", "negative", "latent_image"):
        second[f"9{sampler}"]["inputs"][name][0] = f"9{cond}"
    decode = node_id(prompt, "VAEDecode")
    second[f"9{decode}"] = json.loads(json.dumps(prompt[decode]))
    second[f"9{decode}"]["inputs"]["samples"] = [f"9{sampler}", 0]
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage" and v["inputs"]["images"][0] == decode)
    second[f"9{save}"] = json.loads(json.dumps(prompt[save]))
    second[f"9{save}"]["inputs"]["images"] = [f"9{decode}", 0]
    prompt.update(second)
    start = comfy_server.log_path.stat().st_size
    comfy_server.run(prompt)
    with open(comfy_server.log_path, errors="replace") as log:
        log.seek(start)
        lines = STREAMING_LINE.findall(log.read())
    kept_by_limit = {int(limit): int(kept) for kept, _, limit in lines}
    assert set(kept_by_limit) == {16, 40}, lines  # each sampler ran with its own loader's limit
    assert all(kept <= limit for limit, kept in kept_by_limit.items()), lines
    assert kept_by_limit[16] < kept_by_limit[40], lines
