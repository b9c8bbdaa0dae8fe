"""The decoder stage's DiT: loading the decoder parts, the decoder's inputs, the DiT forward, sampling primitives."""
