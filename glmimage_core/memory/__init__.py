"""Where models live: the host seam, the VRAM plan, the model cache."""
