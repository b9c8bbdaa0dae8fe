"""A test-only ComfyUI node pack, linked into the test server's custom_nodes (never shipped).

`LinkTestStringToCombo` turns a STRING into a COMBO-typed output, so a test can drive a
dropdown input by a real link. ComfyUI accepts a link into a COMBO input when the source's output
type is "COMBO" (or "*"); neither 0.3.75 nor 0.33 registers a core node with such an output (0.33
carries "Convert String to Combo", which does the same, but leaves it out of its node list; the
tests prefer it wherever ComfyUI registers it).
The value reaches the target node unchecked, as any linked value does.
"""


class StringToCombo:
    CATEGORY = "testing"
    DESCRIPTION = "Test helper: passes a text on as a COMBO value."
    FUNCTION = "run"
    RETURN_TYPES = ("COMBO",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"string": ("STRING", {"default": ""})}}

    def run(self, string):
        return (string,)


NODE_CLASS_MAPPINGS = {"LinkTestStringToCombo": StringToCombo}
NODE_DISPLAY_NAME_MAPPINGS = {"LinkTestStringToCombo": "String to Combo (link tests)"}
