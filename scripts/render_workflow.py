"""Draw a saved ComfyUI workflow (UI-format JSON) as a PNG, for the README.

    .venv/bin/python scripts/render_workflow.py example_workflows/glm_image_text_to_image.json docs/x.png

A plain schematic in ComfyUI's dark style: node boxes at their saved positions,
sockets, links coloured by type, widget values listed. No browser needed.
"""

import json
import sys

from PIL import Image, ImageDraw, ImageFont

TYPE_COLOURS = {"IMAGE": (100, 181, 246), "INT": (160, 220, 120), "STRING": (220, 200, 120),
                "GLMIMAGE_AR": (230, 120, 180), "GLMIMAGE_INPUTS": (250, 160, 80), "GLMIMAGE_TOKENS": (170, 130, 250),
                "GLMIMAGE_PRIOR": (90, 210, 200), "GLMIMAGE_SHAPE": (240, 220, 90), "GLMIMAGE_DECODER": (250, 110, 110),
                "MODEL": (180, 160, 255), "CONDITIONING": (255, 200, 120), "LATENT": (255, 140, 200),
                "VAE": (255, 100, 100), "GLMIMAGE_GLYPH": (140, 200, 255)}
ROW = 20
TITLE = 26


def font(size):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    return ImageFont.load_default()


def main(src, dst, scale=1.0):
    wf = json.load(open(src))
    boxes = {}
    for n in wf["nodes"]:
        x, y = n["pos"]
        w = n["size"][0]
        rows = max(len(n["inputs"]), len(n["outputs"])) + len(n.get("widgets_values") or [])
        boxes[n["id"]] = (x, y, w, TITLE + ROW * rows + 10)
    minx = min(b[0] for b in boxes.values()) - 40
    miny = min(b[1] for b in boxes.values()) - 40
    maxx = max(b[0] + b[2] for b in boxes.values()) + 40
    maxy = max(b[1] + b[3] for b in boxes.values()) + 40
    img = Image.new("RGB", (int(maxx - minx), int(maxy - miny)), (32, 32, 36))
    d = ImageDraw.Draw(img)
    f, fb = font(13), font(14)

    def sock(nid, side, idx):
        x, y, w, _ = boxes[nid]
        return (x - minx + (w if side == "out" else 0), y - miny + TITLE + ROW * idx + ROW // 2)

    for n in wf["nodes"]:
        x, y, w, h = boxes[n["id"]]
        x, y = x - minx, y - miny
        d.rounded_rectangle((x, y, x + w, y + h), 8, fill=(53, 53, 58), outline=(90, 90, 96))
        d.rounded_rectangle((x, y, x + w, y + TITLE), 8, fill=(70, 70, 78))
        d.text((x + 10, y + 5), n.get("title") or n["type"], fill=(235, 235, 235), font=fb)
        for i, s in enumerate(n["inputs"]):
            cx, cy = sock(n["id"], "in", i)
            d.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=TYPE_COLOURS.get(s["type"], (200, 200, 200)))
            d.text((cx + 10, cy - 8), s["name"], fill=(200, 200, 200), font=f)
        for i, s in enumerate(n["outputs"]):
            cx, cy = sock(n["id"], "out", i)
            d.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=TYPE_COLOURS.get(s["type"], (200, 200, 200)))
            tw = d.textlength(s["name"], font=f)
            d.text((cx - 10 - tw, cy - 8), s["name"], fill=(200, 200, 200), font=f)
        top = y + TITLE + ROW * max(len(n["inputs"]), len(n["outputs"])) + 4
        for j, v in enumerate(n.get("widgets_values") or []):
            text = str(v)
            text = text if len(text) < (w - 30) // 7 else text[: (w - 30) // 7 - 1] + "…"
            d.rounded_rectangle((x + 8, top + ROW * j, x + w - 8, top + ROW * j + ROW - 3), 5, fill=(34, 34, 38))
            d.text((x + 14, top + ROW * j + 1), text, fill=(170, 170, 170), font=f)
    for lid, a, aslot, b, bslot, t in wf["links"]:
        (x1, y1), (x2, y2) = sock(a, "out", aslot), sock(b, "in", bslot)
        pts = []
        for k in range(41):
            s = k / 40
            cx1, cx2 = x1 + 80, x2 - 80
            px = (1 - s) ** 3 * x1 + 3 * (1 - s) ** 2 * s * cx1 + 3 * (1 - s) * s ** 2 * cx2 + s ** 3 * x2
            py = (1 - s) ** 3 * y1 + 3 * (1 - s) ** 2 * s * y1 + 3 * (1 - s) * s ** 2 * y2 + s ** 3 * y2
            pts.append((px, py))
        d.line(pts, fill=TYPE_COLOURS.get(t, (200, 200, 200)), width=3)
    if scale != 1.0:
        img = img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
    img.save(dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)
