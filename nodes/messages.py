"""Messages for the user: on the running node in the editor, and in the console.

ComfyUI's editor does not show `ui={"text": ...}` of a custom node (it renders
that only for its own Preview Any node), so a message goes out as the node's
progress text (`PromptServer.send_progress_text`, which the editor draws as a
text box on the node; feature-detected, it exists on 0.3.75 and later) and to
ComfyUI's log. Nodes with something worth keeping also return it as a STRING
output, which Preview Any can show.
"""

from __future__ import annotations

import logging

log = logging.getLogger("GLM-Image")


def _running_node_id() -> str | None:
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    context = get_executing_context()
    return context.node_id if context is not None else None


def show_message(text: str) -> bool:
    """Logs `text` and shows it on the node that is running now; returns whether the editor got it."""
    log.info("[GLM-Image] %s", text)
    node_id = _running_node_id()
    if node_id is None:  # not inside a ComfyUI run (a script, a test calling execute)
        return False
    try:
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    send = getattr(server, "send_progress_text", None)
    if send is None:
        return False
    send(text, node_id, getattr(server, "client_id", None))
    return True
