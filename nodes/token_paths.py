"""Which token file a 'Load GLM-Image tokens' node means: ComfyUI's input/, output/ and temp/ folders only, the
dropdown's choices, the linked 'file' winning over it, and every error naming the input it came from."""

from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.tokens.files import read_token_metadata
from ..glmimage_core.tokens.folders import OUTPUT_SUBFOLDER, list_token_files, resolve_token_path

NO_TOKEN_FILES = "(no token files yet)"
TOKEN_FILE_TOOLTIP = (f"A token file: those directly in ComfyUI's input/ folder, and those under "
                      f"output/{OUTPUT_SUBFOLDER}/ (marked [output], where 'Save GLM-Image tokens' writes). "
                      f"Refresh the editor (R) to list new files. Ignored while 'file' is connected.")
FILE_TOOLTIP = ("Optional: a token file name from a link, e.g. the 'file' output of 'Save GLM-Image tokens' "
                "('name [output]'), so one graph can save and load. When connected it wins over token_file. Only "
                "files inside ComfyUI's input/, output/ and temp/ folders are read.")


def comfy_folders() -> dict[str, str]:
    """ComfyUI's input/output/temp folders: the only places token files are read from."""
    import folder_paths

    return {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory(),
            "temp": folder_paths.get_temp_directory()}


def token_file_choices() -> list[str]:
    """The dropdown: token files in input/ and output/glm_image/, re-read on every editor refresh."""
    return list_token_files(comfy_folders()) or [NO_TOKEN_FILES]


def chosen_file(token_file, file) -> tuple[str, str]:
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


def token_path(name: str, what: str):
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
