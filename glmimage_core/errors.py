"""The one exception type the pack raises for bad input.

ComfyUI shows an exception's message in the UI, so every message names the
input that was wrong and says what would be right.
"""


class GlmImageInputError(ValueError):
    """Bad input from the user: a wrong shape, a broken model folder, an empty image..."""
