"""Notes and saved paths reach the user in the editor: as the node's progress text over the editor's
websocket, as STRING outputs a 'Preview as Text' node shows, and in the console (the server log)."""

import asyncio
import json
import struct
import uuid
from pathlib import Path

from tests.comfy_harness import workflow_to_api_prompt

ROUNDTRIP = Path(__file__).resolve().parents[2] / "example_workflows" / "glm_image_tokens_roundtrip.json"
PROGRESS_TEXT = 3  # ComfyUI's BinaryEventTypes.TEXT: [u32 event][u32 len(node id)][node id][text]


async def _queue_and_listen(url: str, prompt: dict, timeout: float) -> tuple[str, list[tuple[str, str]]]:
    """Queues `prompt` as the editor does (its own client id on /ws) and collects the progress texts
    sent to that client until the prompt has finished."""
    import aiohttp

    client_id = str(uuid.uuid4())
    texts = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as response:
                body = await response.json()
                assert response.status == 200, body
            prompt_id = body["prompt_id"]
            await asyncio.wait_for(_collect(ws, prompt_id, texts), timeout)
    return prompt_id, texts


async def _collect(ws, prompt_id: str, texts: list) -> None:
    import aiohttp

    async for message in ws:
        if message.type == aiohttp.WSMsgType.BINARY:
            data = message.data
            if struct.unpack(">I", data[:4])[0] == PROGRESS_TEXT:
                (length,) = struct.unpack(">I", data[4:8])
                texts.append((data[8:8 + length].decode(), data[8 + length:].decode()))
        elif message.type == aiohttp.WSMsgType.TEXT:
            event = json.loads(message.data)
            data = event.get("data") or {}
            if data.get("prompt_id") == prompt_id and (
                    event["type"] in ("execution_success", "execution_error", "execution_interrupted")
                    or (event["type"] == "executing" and data.get("node") is None)):
                return


def test_notes_and_saved_paths_reach_the_editor_and_the_console(comfy_server):
    object_info = comfy_server.object_info()
    prompt = workflow_to_api_prompt(json.loads(ROUNDTRIP.read_text()), object_info)
    ids = {v["class_type"]: k for k, v in prompt.items()}
    generate, save, load = ids["GLMImageGenerateTokens"], ids["GLMImageSaveTokens"], ids["GLMImageLoadTokens"]
    prompt[generate]["inputs"]["speed"] = "compiled"  # on this CPU server it runs standard and says why
    prompt[ids["GLMImageDecode"]]["inputs"]["steps"] = 2  # small and quick on the CPU server
    prompt[ids["GLMImageShape"]]["inputs"].update(size_from="tag", tag="<sop>3 4<eop>")
    assert object_info["GLMImageGenerateTokens"]["output"][1] == "STRING"

    prompt_id, texts = asyncio.run(_queue_and_listen(comfy_server.url, prompt, timeout=600))
    entry = comfy_server.wait_for(prompt_id)

    on_node = {}
    for node_id, text in texts:
        on_node.setdefault(node_id, []).append(text)
    assert any("speed=compiled needs a CUDA GPU" in t for t in on_node.get(generate, [])), texts
    (saved_text,) = on_node[save]
    assert saved_text.startswith("saved glm_image/tokens_") and saved_text.endswith(".safetensors (in output/)")
    assert any(t.startswith("loaded glm_image/tokens_") for t in on_node[load]), texts

    # The STRING outputs, read by the workflow's 'Preview as Text' nodes (what the editor shows there).
    previews = {prompt[k]["inputs"]["source"][0]: "\n".join(v["text"]) for k, v in entry["outputs"].items()
                if prompt[k]["class_type"] == "PreviewAny"}
    assert "speed=compiled needs a CUDA GPU" in previews[generate]
    saved_name = previews[save]
    assert saved_name.startswith("glm_image/tokens_") and saved_name.endswith(".safetensors [output]")
    assert (comfy_server.output_dir / saved_name.removesuffix(" [output]")).is_file()
    assert saved_text == f"saved {saved_name.removesuffix(' [output]')} (in output/)"

    log = comfy_server.log_tail(200_000)
    assert "[GLM-Image] speed=compiled needs a CUDA GPU" in log and f"[GLM-Image] {saved_text}" in log
