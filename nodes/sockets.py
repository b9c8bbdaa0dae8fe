"""The pack's custom socket types. Each carries one dataclass from `glmimage_core.payloads`."""

from .api import io

GlmImageAR = io.Custom("GLMIMAGE_AR")  # glmimage_core.payloads.ARModel
GlmImageShape = io.Custom("GLMIMAGE_SHAPE")  # glmimage_core.payloads.GridShape
GlmImageInputs = io.Custom("GLMIMAGE_INPUTS")  # glmimage_core.payloads.GlmImageInputs
GlmImageTokens = io.Custom("GLMIMAGE_TOKENS")  # glmimage_core.payloads.GeneratedTokens
GlmImagePrior = io.Custom("GLMIMAGE_PRIOR")  # glmimage_core.payloads.PriorTokens
# glmimage_core.payloads.DecoderBundle (with its loader's VRAM limit beside it: nodes/inputs.py LoaderDecoder)
GlmImageDecoder = io.Custom("GLMIMAGE_DECODER")

CATEGORY = "GLM-Image"
GlmImageGlyph = io.Custom("GLMIMAGE_GLYPH")  # glmimage_core.payloads.GlyphEncoder
