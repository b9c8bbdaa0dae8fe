"""The pack's custom socket types. Each carries one dataclass from `glmimage_core`."""

from .api import io

GlmImageAR = io.Custom("GLMIMAGE_AR")  # glmimage_core.ar_loading.ARModel
GlmImageShape = io.Custom("GLMIMAGE_SHAPE")  # glmimage_core.shapes.GridShape
GlmImageInputs = io.Custom("GLMIMAGE_INPUTS")  # glmimage_core.prompting.GlmImageInputs
GlmImageTokens = io.Custom("GLMIMAGE_TOKENS")  # glmimage_core.generation.GeneratedTokens
GlmImagePrior = io.Custom("GLMIMAGE_PRIOR")  # glmimage_core.prior.PriorTokens
GlmImageDecoder = io.Custom("GLMIMAGE_DECODER")  # glmimage_core.decoder_loading.DecoderBundle

CATEGORY = "GLM-Image"
GlmImageGlyph = io.Custom("GLMIMAGE_GLYPH")  # glmimage_core.decoder_loading.GlyphEncoder
