"""The generate node's live preview, received the way the editor receives it: over ComfyUI's websocket.

The client connects to /ws?clientId=..., announces `supports_preview_metadata` as the editor's
frontend does (so each preview comes tagged with the node it belongs to), queues the text-to-image
example workflow under its client id, and records every message until the prompt has finished.
"""

import asyncio
import io
import json
import struct
import time
import uuid
from pathlib import Path

import aiohttp
from PIL import Image

from tests.comfy_harness import workflow_to_api_prompt

WORKFLOW = Path(__file__).resolve().parents[2] / "example_workflows" / "glm_image_text_to_image.json"
PREVIEW_IMAGE_WITH_METADATA = 4  # protocol.BinaryEventTypes in ComfyUI
MAX_PREVIEWS_PER_S = 10


async def _run_and_listen(url: str, prompt: dict, timeout: float = 600.0) -> tuple[str, list[dict]]:
    """Queue `prompt` from a websocket client; return (prompt id, [{t, kind, data}, ...]) in arrival order."""
    client_id = uuid.uuid4().hex
    events: list[dict] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
            await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            while True:  # the server answers with its own flags once it has stored ours
                msg = await ws.receive_json(timeout=60)
                if msg.get("type") == "feature_flags":
                    break
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                body = await r.json()
                assert r.status == 200, body
            prompt_id = body["prompt_id"]
            deadline = time.monotonic() + timeout
            while True:
                msg = await ws.receive(timeout=max(1.0, deadline - time.monotonic()))
                now = time.monotonic()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    (kind,) = struct.unpack(">I", msg.data[:4])
                    if kind == PREVIEW_IMAGE_WITH_METADATA:
                        (size,) = struct.unpack(">I", msg.data[4:8])
                        meta = json.loads(msg.data[8:8 + size])
                        events.append({"t": now, "kind": "preview", "data": meta, "image": msg.data[8 + size:]})
                    else:
                        events.append({"t": now, "kind": f"binary{kind}", "data": None})
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    events.append({"t": now, "kind": data["type"], "data": data.get("data")})
                    if data["type"] in ("execution_error", "execution_interrupted"):
                        raise AssertionError(f"the prompt failed: {data}")
                    if data["type"] == "executing" and data["data"].get("node") is None \
                            and data["data"].get("prompt_id") == prompt_id:
                        return prompt_id, events
                else:
                    raise AssertionError(f"websocket closed or failed: {msg}")


def test_generate_node_shows_live_previews_at_a_bounded_rate(comfy_server):
    full = workflow_to_api_prompt(json.loads(WORKFLOW.read_text()), comfy_server.object_info())
    ids = {v["class_type"]: k for k, v in full.items()}
    # Only the token branch: the output that saves the token preview and what it needs (the
    # decoder is not under test and would only cost time).
    save = next(k for k, v in full.items() if v["class_type"] == "SaveImage"
                and v["inputs"].get("images", [None])[0] == ids["GLMImagePreviewTokens"])
    prompt, todo = {}, [save]
    while todo:
        node_id = todo.pop()
        prompt[node_id] = full[node_id]
        todo += [v[0] for v in full[node_id]["inputs"].values() if isinstance(v, list) and v[0] not in prompt]
    generate = ids["GLMImageGenerateTokens"]
    assert generate in prompt
    # A wide picture (24 x 40 tokens, 1201 sampled with the 12 x 20 preview grid): long enough on
    # any CPU to span several report intervals.
    prompt[ids["GLMImageShape"]]["inputs"].update(size_from="pixels", width=1280, height=768)
    prompt[generate]["inputs"]["seed"] = 8101

    _, events = asyncio.run(_run_and_listen(comfy_server.url, prompt))

    executing = [(i, e) for i, e in enumerate(events) if e["kind"] == "executing"]
    start = next(i for i, e in executing if e["data"]["node"] == generate)
    end = next(i for i, e in executing if i > start)
    duration = events[end]["t"] - events[start]["t"]
    previews = [e for e in events if e["kind"] == "preview" and e["data"]["node_id"] == generate]
    assert previews, f"no preview for the generate node; got {sorted({e['kind'] for e in events})}"
    assert all(start < events.index(e) < end for e in previews)  # while that node was running
    assert not [e for e in events if e["kind"] == "preview" and e["data"]["node_id"] != generate]
    rate = len(previews) / duration
    assert len(previews) >= 3 and rate < MAX_PREVIEWS_PER_S, (len(previews), duration)
    progress = [e["data"] for e in events[start:end] if e["kind"] == "progress"]
    assert progress[-1]["value"] == progress[-1]["max"] == 24 * 40 + 12 * 20 + 1
    assert len(progress) / duration < MAX_PREVIEWS_PER_S + 1  # one per report, not one per token

    sizes = []
    for e in previews:
        with Image.open(io.BytesIO(e["image"])) as picture:
            assert picture.format == "JPEG" and e["data"]["image_type"] == "image/jpeg"
            sizes.append(picture.size)
    # The 12x20 preview grid at 25 px per token, or the 24x40 grid at 12 px: the last is the big one.
    assert set(sizes) <= {(500, 300), (480, 288)} and sizes[-1] == (480, 288), sizes
    print(f"\n{len(previews)} previews and {len(progress)} progress messages in {duration:.1f} s "
          f"({rate:.1f} previews/s)")
