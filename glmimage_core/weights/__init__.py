"""Weights: what a path holds (formats), reading it tensor by tensor (tensor_reader), fp8 conventions (fp8),
loading a part straight into its layers (lean_load), writing single files (writer, convert)."""
