"""Weight files and formats: the safetensors header reader (files), cast layers, model folders, PEFT adapter rules
(peft); what a path holds (formats: the seam every format plugs into), reading it tensor by tensor (tensor_reader),
fp8 conventions (fp8), loading a part straight into its layers (lean_load), writing single files (writer, convert),
GGUF files (gguf_files, gguf_format)."""

from . import gguf_format  # noqa: E402,F401  (registers the GGUF container and the gguf_* convert formats)
