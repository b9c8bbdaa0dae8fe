"""Save / Load GLM-Image tokens: keep sampled tokens as files and decode them again later.

Load lists token files like ComfyUI's own loaders list theirs (a dropdown re-read on every editor
refresh, output files marked '[output]'); a linked 'file' input wins over it, because a dropdown
cannot take the STRING that Save returns and one graph should be able to save and load. Every name
goes through glmimage_core.tokens.folders (ComfyUI's folders only) and token_files (header first).
"""

import os

from .api import io

from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.tokens.files import load_prior, save_prior
from ..glmimage_core.tokens.folders import OUTPUT_SUBFOLDER, resolve_token_path
from .messages import show_message
from .sockets import CATEGORY, GlmImagePrior
from .token_paths import (FILE_TOOLTIP, NO_TOKEN_FILES, TOKEN_FILE_TOOLTIP, chosen_file,  # noqa: F401 (NO_TOKEN_FILES:
                          comfy_folders, token_file_choices, token_path)                    # the placeholder, here too)

_NOT_CONNECTED = object()  # validate_inputs: an optional input that is absent (a linked one arrives as None)


class GLMImageSaveTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageSaveTokens",
            display_name="Save GLM-Image tokens",
            category=CATEGORY,
            description="Writes the token grid(s) to output/ as safetensors (shape, mode and prompt in its "
                        "metadata), so they can be decoded again later with other steps, guidance or seeds.",
            inputs=[
                GlmImagePrior.Input("prior", tooltip="The tokens to keep."),
                io.String.Input("filename_prefix", default=f"{OUTPUT_SUBFOLDER}/tokens",
                                tooltip=f"File name prefix under output/; a counter is appended. Files under "
                                        f"output/{OUTPUT_SUBFOLDER}/ appear in 'Load GLM-Image tokens' list."),
            ],
            outputs=[io.String.Output("file", display_name="file",
                                      tooltip="The saved file as 'name [output]', for 'Load GLM-Image tokens' (its "
                                              "'file' input) or 'Preview as Text'.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, prior, filename_prefix: str) -> io.NodeOutput:
        import folder_paths

        output_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        file_name = f"{name}_{counter:05}_.safetensors"
        save_prior(prior, os.path.join(folder, file_name))
        relative = f"{subfolder}/{file_name}" if subfolder else file_name
        show_message(f"saved {relative} (in output/)")
        return io.NodeOutput(f"{relative} [output]")


class GLMImageLoadTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageLoadTokens",
            display_name="Load GLM-Image tokens",
            category=CATEGORY,
            description="Reads tokens written by 'Save GLM-Image tokens' (safetensors only, from ComfyUI's input/, "
                        "output/ or temp/ folder; the file's header is checked before anything else is read).",
            inputs=[
                # Added after 0.1.0 (whose one input was 'file'): optional, so a 0.1.0 API prompt still runs.
                io.Combo.Input("token_file", options=token_file_choices(), tooltip=TOKEN_FILE_TOOLTIP,
                               optional=True),
                io.String.Input("file", optional=True, force_input=True, tooltip=FILE_TOOLTIP),
            ],
            outputs=[GlmImagePrior.Output("prior", display_name="prior", tooltip="The loaded token grid(s).")],
        )

    @classmethod
    def validate_inputs(cls, token_file=None, file=_NOT_CONNECTED) -> bool | str:
        """Checks typed-in names when the graph is queued. Linked inputs arrive here as None (ComfyUI
        passes only constants), so they are checked when the node runs. The dropdown is checked here,
        not by ComfyUI's list check, because it is ignored while 'file' is connected."""
        if file is None or (file is _NOT_CONNECTED and token_file is None):
            return True  # linked: checked when the node runs
        try:
            token_path(*chosen_file(token_file, None if file is _NOT_CONNECTED else file))
        except GlmImageInputError as err:
            return str(err)
        return True

    @classmethod
    def fingerprint_inputs(cls, token_file=None, file=_NOT_CONNECTED):
        """Re-run when the chosen file changes on disk, not only when its name does. A linked name
        is not known yet (None here); then the upstream node's own change re-runs this one."""
        name = token_file if file is _NOT_CONNECTED else file
        if name is None:
            return "linked"
        try:
            stat = os.stat(resolve_token_path(name, comfy_folders()))
        except (OSError, ValueError):
            return name
        return f"{name}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, token_file: str | None = None, file: str | None = None) -> io.NodeOutput:
        name, what = chosen_file(token_file, file)
        path = token_path(name, what)
        try:
            prior = load_prior(path)
        except GlmImageInputError as err:
            raise GlmImageInputError(f"{what}: {err}") from err
        show_message(f"loaded {name.strip()}: {prior.batch_size} grid(s) of {prior.token_h}x{prior.token_w} "
                     f"tokens ({prior.mode})")
        return io.NodeOutput(prior)
