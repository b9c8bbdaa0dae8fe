"""Writes the example workflows in ComfyUI's saved (UI) format.

    .venv/bin/python scripts/make_example_workflows.py example_workflows --decode

Run it after changing a node's inputs so the saved widget values stay in step
(tests/integration checks them against the server's /object_info).
"""
import json, sys, uuid
from pathlib import Path

class WF:
    def __init__(self):
        self.nodes, self.links, self.nid, self.lid = [], [], 0, 0
    def node(self, type_, pos, widgets, inputs=(), outputs=(), size=(320, 120), title=None):
        self.nid += 1
        n = {"id": self.nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": self.nid - 1,
             "mode": 0, "inputs": [{"name": name, "type": t, "link": None} for name, t in inputs],
             "outputs": [{"name": name, "type": t, "links": []} for name, t in outputs],
             "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title: n["title"] = title
        self.nodes.append(n)
        return n
    def link(self, a, aslot, b, bname):
        self.lid += 1
        t = a["outputs"][aslot]["type"]
        bslot = [i["name"] for i in b["inputs"]].index(bname)
        assert b["inputs"][bslot]["type"] in (t, "*"), (a["type"], b["type"], bname)
        a["outputs"][aslot]["links"].append(self.lid)
        b["inputs"][bslot]["link"] = self.lid
        self.links.append([self.lid, a["id"], aslot, b["id"], bslot, t])
    def dump(self, path):
        data = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, path.name)), "revision": 0, "last_node_id": self.nid,
                "last_link_id": self.lid, "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}
        path.write_text(json.dumps(data, indent=2) + "\n")

AR = ("ar_model", "GLMIMAGE_AR")
# Outputs are saved under their display names, as the editor itself saves them (it renames them on load).
AR_OUT = ("AR model", "GLMIMAGE_AR")
SHAPE_OUT = [("shape", "GLMIMAGE_SHAPE"), ("width (px)", "INT"), ("height (px)", "INT"), ("grid height", "INT"),
             ("grid width", "INT"), ("preview height", "INT"), ("preview width", "INT"), ("t2i token count", "INT"),
             ("i2i token count", "INT")]
DECODE = "--decode" in sys.argv
# Sizes as the editor draws these nodes (ComfyUI 0.3.75's editor; scripts/editor_screenshots.py reports any
# overlap, before and after a run). Room below the loaders for the memory text they show when they run, and
# below generate for its live preview: both make those nodes taller.
SIDE_Y = 330   # under the AR loader (about 200 tall, then its text)
ROW2_Y = 560
PROMPT_INPUTS = [AR, ("shape", "GLMIMAGE_SHAPE"), ("image", "IMAGE"), ("image_2", "IMAGE")]


#: The single files `python -m glmimage_core convert --format fp8_e4m3fn` writes (README "Weights").
FILES = {"ar": "glm_image_ar_fp8_e4m3fn_comfy.safetensors", "dit": "glm_image_dit_fp8_e4m3fn_comfy.safetensors",
         "vae": "glm_image_vae_bf16.safetensors", "glyph": "glm_image_glyph_bf16.safetensors"}


def ar_loader(w, model="GLM-Image"):
    return w.node("GLMImageARLoader", (0, 0), [model, "auto", "auto", "sdpa", "none", "default"],
                  outputs=[AR_OUT, ("memory", "STRING")], size=(320, 200))


def prompt_node(w, ar, text):
    node = w.node("GLMImagePrompt", (360, 0), [text], inputs=PROMPT_INPUTS,
                  outputs=[("inputs", "GLMIMAGE_INPUTS")], size=(380, 220))
    w.link(ar, 0, node, "ar_model")
    return node

def sized_prompt(w, ar, shape_widgets, text):
    """The shape node (left, below the AR loader) feeding a prompt node: the start of every text-to-image graph."""
    shape = w.node("GLMImageShape", (0, SIDE_Y), shape_widgets, outputs=SHAPE_OUT, size=(320, 340))
    prompt = prompt_node(w, ar, text)
    w.link(shape, 0, prompt, "shape")
    return prompt

def chain(w, ar, prompt_node, x, y, seed, name, preview_y=140, server_url=None):
    """generate tokens -> extract -> preview (+ notes); with `server_url`, the server node samples them."""
    if server_url is None:
        gen = w.node("GLMImageGenerateTokens", (x, y), [seed, "fixed", 1, True, 0.0, 0.0, 0, "standard", True, False],
                     inputs=[AR, ("inputs", "GLMIMAGE_INPUTS")],
                     outputs=[("tokens", "GLMIMAGE_TOKENS"), ("notes", "STRING")], size=(320, 300))
        w.link(ar, 0, gen, "ar_model")
    else:
        gen = w.node("GLMImageGenerateTokensServer", (x, y), [seed, "fixed", 1, True, 0.0, 0.0, 0, server_url],
                     inputs=[("inputs", "GLMIMAGE_INPUTS")],
                     outputs=[("tokens", "GLMIMAGE_TOKENS"), ("notes", "STRING")], size=(320, 300))
    w.link(prompt_node, 0, gen, "inputs")
    notes = w.node("PreviewAny", (x + 360, y + 260), [], inputs=[("source", "*")], size=(280, 150),
                   title="GLM-Image notes")
    w.link(gen, 1, notes, "source")
    ext = w.node("GLMImageExtractTokens", (x + 360, y), [], inputs=[("tokens", "GLMIMAGE_TOKENS")],
                 outputs=[("prior", "GLMIMAGE_PRIOR"), ("token count", "INT")], size=(280, 80))
    w.link(gen, 0, ext, "tokens")
    prev = w.node("GLMImagePreviewTokens", (x + 360, y + 140), [8], inputs=[("prior", "GLMIMAGE_PRIOR")],
                  outputs=[("IMAGE", "IMAGE")], size=(280, 80))
    w.link(ext, 0, prev, "prior")
    save = w.node("SaveImage", (x + 680, y + preview_y), [f"{name}_tokens_preview"], inputs=[("images", "IMAGE")],
                  size=(300, 300))
    w.link(prev, 0, save, "images")
    return ext

def decoder(w, ext, prompt_text, x, y, name, images=None, seed=0):
    dl = w.node("GLMImageDecoderLoader", (x, y), ["GLM-Image", "auto", "auto", "default", 0.0],
                outputs=[("decoder", "GLMIMAGE_DECODER"), ("memory", "STRING")], size=(320, 180))
    dec = w.node("GLMImageDecode", (x + 360, y), ["", 50, 1.5, seed, "fixed"],
                 inputs=[("decoder", "GLMIMAGE_DECODER"), ("prior", "GLMIMAGE_PRIOR"), ("source_image", "IMAGE"), ("source_image_2", "IMAGE")],
                 outputs=[("IMAGE", "IMAGE")], size=(320, 250))
    w.link(dl, 0, dec, "decoder")
    w.link(ext, 0, dec, "prior")
    if images is not None:
        w.link(images, 0, dec, "source_image")
    save = w.node("SaveImage", (x + 720, y), [name], inputs=[("images", "IMAGE")], size=(400, 400))
    w.link(dec, 0, save, "images")

def ksampler_workflow(out, names, stem, text):
    """Tokens -> GLM-Image conditioning -> KSampler -> VAE Decode, the DiT / VAE / glyph encoder as native models
    loaded from `names` (the hub folder's name for each, or each part's single file)."""
    w = WF()
    ar = ar_loader(w, names["ar"])
    prompt = sized_prompt(w, ar, ["pixels", 1024, 1024, 32, 32, "<sop>32 32<eop>"], text)
    ext = chain(w, ar, prompt, 780, 0, 3, stem)
    dit = w.node("GLMImageDiTLoader", (0, SIDE_Y + 400), [names["dit"], "default", 0.0, "auto", "auto"],
                 outputs=[("MODEL", "MODEL"), ("memory", "STRING")], size=(320, 180))
    glyph = w.node("GLMImageGlyphEncoderLoader", (0, SIDE_Y + 700), [names["glyph"], "auto", "auto"],
                   outputs=[("glyph encoder", "GLMIMAGE_GLYPH")], size=(320, 110))
    vae = w.node("GLMImageVAELoader", (0, SIDE_Y + 850), [names["vae"], "auto", "auto"], outputs=[("VAE", "VAE")],
                 size=(320, 110))
    cond = w.node("GLMImageConditioning", (780, ROW2_Y), [""],
                  inputs=[("model", "MODEL"), ("glyph_encoder", "GLMIMAGE_GLYPH"), ("prior", "GLMIMAGE_PRIOR"),
                          ("vae", "VAE"), ("source_image", "IMAGE"), ("source_image_2", "IMAGE")],
                  outputs=[("MODEL", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                           ("LATENT", "LATENT")], size=(320, 220))
    w.link(dit, 0, cond, "model")
    w.link(glyph, 0, cond, "glyph_encoder")
    w.link(ext, 0, cond, "prior")
    ks = w.node("KSampler", (1140, ROW2_Y), [3, "fixed", 50, 1.5, "euler", "simple", 1.0],
                inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                        ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")], size=(320, 270))
    for slot, name in enumerate(("model", "positive", "negative")):
        w.link(cond, slot, ks, name)
    w.link(cond, 3, ks, "latent_image")
    dec = w.node("VAEDecode", (1500, ROW2_Y), [], inputs=[("samples", "LATENT"), ("vae", "VAE")],
                 outputs=[("IMAGE", "IMAGE")], size=(220, 60))
    w.link(ks, 0, dec, "samples")
    w.link(vae, 0, dec, "vae")
    save = w.node("SaveImage", (1760, ROW2_Y), [stem], inputs=[("images", "IMAGE")], size=(400, 400))
    w.link(dec, 0, save, "images")
    w.dump(out / f"{stem}.json")


out = Path(sys.argv[1])
# text to image
w = WF()
ar = ar_loader(w)
prompt_text = 'A cosy reading nook by a rainy window, warm lamp light, a mug that says "GLM"'
prompt = sized_prompt(w, ar, ["pixels", 1024, 1024, 32, 32, "<sop>32 32<eop>"], prompt_text)
ext = chain(w, ar, prompt, 780, 0, 42, "glm_image_t2i")
if DECODE:
    decoder(w, ext, prompt_text, 780, ROW2_Y, "glm_image_t2i", seed=42)
w.dump(out / "glm_image_text_to_image.json")

# text to image, the tokens from an AR server (python -m glmimage_serve; the tests point server_url at theirs)
w = WF()
ar = w.node("GLMImageARProcessorLoader", (0, 0), ["GLM-Image"], outputs=[("AR processor", "GLMIMAGE_AR")],
            size=(320, 200), title="Load GLM-Image processor (server)")
prompt_text = 'A harbour at sunrise, fishing boats, a banner that says "SERVED"'
prompt = sized_prompt(w, ar, ["pixels", 1024, 1024, 32, 32, "<sop>32 32<eop>"], prompt_text)
ext = chain(w, ar, prompt, 780, 0, 42, "glm_image_t2i_server", server_url="http://127.0.0.1:8000")
if DECODE:
    decoder(w, ext, prompt_text, 780, ROW2_Y, "glm_image_t2i_server", seed=42)
w.dump(out / "glm_image_text_to_image_server.json")

# image to image
w = WF()
ar = ar_loader(w)
load = w.node("LoadImage", (0, SIDE_Y), ["example.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
              size=(320, 330))
edit = "Turn it into a watercolour painting and add a small red boat"
prompt = prompt_node(w, ar, edit)
w.link(load, 0, prompt, "image")
ext = chain(w, ar, prompt, 780, 0, 7, "glm_image_i2i")
if DECODE:
    decoder(w, ext, edit, 780, ROW2_Y, "glm_image_i2i", images=load, seed=7)
w.dump(out / "glm_image_image_to_image.json")

if DECODE:
    # sample once, save, load, decode
    w = WF()
    ar = ar_loader(w)
    text = 'A lighthouse on a cliff at dusk, a sign that reads "TOKENS"'
    prompt = sized_prompt(w, ar, ["tag", 1024, 1024, 32, 32, "<sop>24 32<eop>"], text)
    # the token preview lower down: Save (above it) grows with the name of the file it wrote
    ext = chain(w, ar, prompt, 780, 0, 1234, "glm_image_roundtrip", preview_y=210)
    save = w.node("GLMImageSaveTokens", (1460, 0), ["glm_image/tokens"], inputs=[("prior", "GLMIMAGE_PRIOR")],
                  outputs=[("file", "STRING")], size=(300, 90))
    w.link(ext, 0, save, "prior")
    saved = w.node("PreviewAny", (1800, 0), [], inputs=[("source", "*")], size=(300, 110), title="Saved token file")
    w.link(save, 0, saved, "source")
    # 'file' (linked from Save) wins over the token_file dropdown, so this graph saves and loads in one run.
    loadt = w.node("GLMImageLoadTokens", (1800, 160), ["(no token files yet)"],
                   inputs=[("file", "STRING")], outputs=[("prior", "GLMIMAGE_PRIOR")], size=(300, 90))
    w.link(save, 0, loadt, "file")
    decoder(w, loadt, text, 780, ROW2_Y, "glm_image_roundtrip", seed=5)
    w.dump(out / "glm_image_tokens_roundtrip.json")

    # the DiT as a native MODEL: tokens -> conditioning -> KSampler -> VAE Decode
    ksampler_workflow(out, dict.fromkeys(FILES, "GLM-Image"), "glm_image_ksampler",
                      'A street cafe at night, a neon sign that says "KSampler"')
    # the same from one file per part (fp8 AR model and DiT): what 8-16 GB cards load
    ksampler_workflow(out, FILES, "glm_image_single_files",
                      'A bakery window at dawn, a chalkboard that says "FRESH"')
print("written")
