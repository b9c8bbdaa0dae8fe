"""The one exception type the pack raises for bad input.

ComfyUI shows an exception's message in the UI, so every message names the
input that was wrong and says what would be right.
"""


class GlmImageInputError(ValueError):
    """Bad input from the user: a wrong shape, a broken model folder, an empty image..."""


class GlmImageServerError(RuntimeError):
    """The AR server (python -m glmimage_serve) could not be reached, refused the request or failed
    while serving it. The message names the server's URL and what to do."""
