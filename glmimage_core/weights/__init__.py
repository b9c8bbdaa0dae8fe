"""Weight files and formats: the safetensors header reader, cast layers, model folders."""
