"""Weight files and formats: safetensors headers, cast layers, model folders, PEFT adapters."""
