import os

from .api import io

from ..glmimage_core.token_files import load_prior, save_prior
from .sockets import CATEGORY, GlmImagePrior

FILE_TOOLTIP = ("A token file: a name under ComfyUI's input/ folder, or 'name [output]' for one under output/ "
                "(what 'Save GLM-Image tokens' returns).")


def _resolve(file: str) -> str:
    import folder_paths

    if not file.strip():
        raise ValueError("file is empty: give a .safetensors token file (see 'Save GLM-Image tokens')")
    return folder_paths.get_annotated_filepath(file.strip())


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
                io.String.Input("filename_prefix", default="glm_image/tokens",
                                tooltip="File name prefix under output/; a counter is appended."),
            ],
            outputs=[io.String.Output("file", tooltip="The saved file as 'name [output]', for "
                                                     "'Load GLM-Image tokens'.")],
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
        return io.NodeOutput(f"{relative} [output]", ui={"text": [relative]})


class GLMImageLoadTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageLoadTokens",
            display_name="Load GLM-Image tokens",
            category=CATEGORY,
            description="Reads tokens written by 'Save GLM-Image tokens' (safetensors only; the file is checked "
                        "and a mismatch is reported).",
            inputs=[io.String.Input("file", default="glm_image/tokens_00001_.safetensors [output]",
                                    tooltip=FILE_TOOLTIP)],
            outputs=[GlmImagePrior.Output("prior", tooltip="The loaded token grid(s).")],
        )

    @classmethod
    def fingerprint_inputs(cls, file: str):
        """Re-run when the file on disk changes, not only when its name does."""
        try:
            stat = os.stat(_resolve(file))
        except (OSError, ValueError):
            return file
        return f"{file}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, file: str) -> io.NodeOutput:
        return io.NodeOutput(load_prior(_resolve(file)))
