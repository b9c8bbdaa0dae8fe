"""Save / Load GLM-Image tokens: keep sampled tokens as files and decode them again later.

Load lists token files like ComfyUI's own loaders list theirs (a dropdown re-read on every editor
refresh, output files marked '[output]'); a linked 'file' input wins over it, because a dropdown
cannot take the STRING that Save returns and one graph should be able to save and load. Every name
goes through glmimage_core.token_folders (ComfyUI's folders only) and token_files (header first).
"""

import os

from .api import io

from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.token_files import load_prior, read_token_metadata, save_prior
from ..glmimage_core.token_folders import OUTPUT_SUBFOLDER, list_token_files, resolve_token_path
from .messages import show_message
from .sockets import CATEGORY, GlmImagePrior

NO_TOKEN_FILES = "(no token files yet)"
TOKEN_FILE_TOOLTIP = (f"A token file: those directly in ComfyUI's input/ folder, and those under "
                      f"output/{OUTPUT_SUBFOLDER}/ (marked [output], where 'Save GLM-Image tokens' writes). "
                      f"Refresh the editor (R) to list new files. Ignored while 'file' is connected.")
FILE_TOOLTIP = ("Optional: a token file name from a link, e.g. the 'file' output of 'Save GLM-Image tokens' "
                "('name [output]'), so one graph can save and load. When connected it wins over token_file. Only "
                "files inside ComfyUI's input/, output/ and temp/ folders are read.")
_NOT_CONNECTED = object()  # validate_inputs: an optional input that is absent (a linked one arrives as None)


def comfy_folders() -> dict[str, str]:
    """ComfyUI's input/output/temp folders: the only places token files are read from."""
    import folder_paths

    return {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory(),
            "temp": folder_paths.get_temp_directory()}


def token_file_choices() -> list[str]:
    """The dropdown: token files in input/ and output/glm_image/, re-read on every editor refresh."""
    return list_token_files(comfy_folders()) or [NO_TOKEN_FILES]


def _chosen(token_file, file) -> tuple[str, str]:
    """(name, input it came from): the linked 'file' wins over the dropdown."""
    if file is not None:
        return file, "file"
    if token_file is None:  # optional since 0.2.0 (0.1.0 prompts name only 'file')
        raise GlmImageInputError("token_file: choose a token file, or connect 'file' (e.g. from 'Save GLM-Image "
                                 "tokens')")
    if token_file == NO_TOKEN_FILES:
        raise GlmImageInputError(f"token_file: there are no token files in input/ or output/{OUTPUT_SUBFOLDER}/ "
                                 f"yet. Save some with 'Save GLM-Image tokens' and refresh (R), or connect "
                                 f"'file'.")
    return token_file, "token_file"


def _token_path(name: str, what: str):
    """The real path of a token file named by input `what`: inside ComfyUI's folders, existing, and
    a token file by its size and header (no tensor read). Errors name the input."""
    path = resolve_token_path(name, comfy_folders(), what)
    if not path.is_file():
        raise GlmImageInputError(f"{what}: {name!r} does not exist (looked for {path}); choose a listed file and "
                                 f"refresh the editor (R) after adding files")
    try:
        read_token_metadata(path)
    except (GlmImageInputError, OSError) as err:
        raise GlmImageInputError(f"{what}: {err}") from err
    return path


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
            _token_path(*_chosen(token_file, None if file is _NOT_CONNECTED else file))
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
        name, what = _chosen(token_file, file)
        path = _token_path(name, what)
        try:
            prior = load_prior(path)
        except GlmImageInputError as err:
            raise GlmImageInputError(f"{what}: {err}") from err
        show_message(f"loaded {name.strip()}: {prior.batch_size} grid(s) of {prior.token_h}x{prior.token_w} "
                     f"tokens ({prior.mode})")
        return io.NodeOutput(prior)
