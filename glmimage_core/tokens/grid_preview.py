"""False-colour pictures of token grids, to see the AR stage's result without the decoder.

Colours come from the model's own codebook when it is at hand: the VQ
embeddings (L2-normalised, as the quantizer compares them) projected onto
their first three principal components and mapped to RGB. Tokens whose
codebook vectors are close get close colours, so areas the model fills with
related tokens read as areas, not as confetti of unrelated hues.
The palette is computed once per loaded model (`model_palette`) and travels
with the tokens it coloured.

Without a model (a token file loaded on its own) every id gets a fixed
golden-ratio hue (`hue_palette`): neighbouring ids differ clearly, repeated
ids show as flat areas, but similar tokens do not look alike.

`LiveGridPreview` renders the grid being filled while the model samples, for
the generate node's live preview.
"""

from __future__ import annotations

import colorsys
import functools
import threading
import weakref

import numpy as np
import torch

from ..errors import GlmImageInputError
from ..shapes import GridShape

#: Where the VQ codebook lives in transformers' `GlmImageForConditionalGeneration` (5.x):
#: model.model.vqmodel.quantize.embedding (an nn.Embedding of num_embeddings x embed_dim).
CODEBOOK_PATHS = ("model.vqmodel.quantize.embedding", "vqmodel.quantize.embedding")

#: Colour of grid cells not sampled yet, and of ids that are not codebook entries (an early
#: end-of-image, or another special id sampled inside a grid), in the live preview.
UNFILLED_RGB = (38, 38, 38)
INVALID_RGB = (255, 0, 255)

#: Longest side of a live preview picture, as ComfyUI's own `--preview-size` default.
PREVIEW_MAX_PX = 512


# --- palettes ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _hue_palette(codebook_size: int) -> torch.Tensor:
    golden = 0.618033988749895
    colours = []
    for i in range(codebook_size):
        hue = (i * golden) % 1.0
        sat = 0.55 + 0.45 * ((i * 7) % 5) / 4
        val = 0.6 + 0.4 * ((i * 3) % 4) / 3
        colours.append(colorsys.hsv_to_rgb(hue, sat, val))
    return torch.tensor(colours, dtype=torch.float32)


def hue_palette(codebook_size: int) -> torch.Tensor:
    """[codebook_size, 3] float colours from the ids alone (no model): the fallback palette."""
    return _hue_palette(int(codebook_size)).clone()


def codebook_palette(embedding: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """[V, 3] colours in 0..1 from a [V, D] codebook: similar vectors get similar colours.

    The rows are L2-normalised (the quantizer matches on the unit sphere), centred, and
    projected onto their top three principal components, found by subspace iteration from
    a fixed start (so the same codebook always gives the same colours, with no global RNG
    touched; a 16384 x 2048 codebook takes a few matrix products, computed on the device
    the codebook is on, about 2 s on 2 CPU cores). Each
    component's sign is fixed so that its largest loading is positive, then it is mapped to
    0..1 between its 1st and 99th percentile (a few outlying entries do not wash out the
    rest) and clipped.
    """
    if embedding.ndim != 2 or embedding.shape[0] < 2:
        raise GlmImageInputError(f"codebook must be [entries, dim] with at least 2 entries, "
                                 f"got shape {tuple(embedding.shape)}")
    x = torch.nn.functional.normalize(embedding.detach().to(torch.float32), p=2, dim=-1)
    x = x - x.mean(dim=0, keepdim=True)
    v, d = x.shape
    k = min(d, 3)
    width = min(d, k + 7)  # a few extra directions make the iteration converge faster
    start = torch.randn(d, width, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    basis, _ = torch.linalg.qr(start.to(x.device))
    for _ in range(iterations):
        # (y.T @ x).T is x.T @ y reading x row by row: several times faster on a CPU
        basis, _ = torch.linalg.qr(((x @ basis).T @ x).T)
    projected = x @ basis                                    # [V, width]
    values, vectors = torch.linalg.eigh(projected.T @ projected)  # ascending
    components = basis @ vectors[:, torch.argsort(values, descending=True)[:k]]  # [D, k]
    components = components.cpu()
    largest = components.abs().argmax(dim=0)
    signs = torch.sign(components[largest, torch.arange(k)])
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
    scores = (x @ components.to(x.device)).cpu()            # [V, k]
    if k < 3:
        scores = torch.cat([scores, torch.zeros(v, 3 - k)], dim=1)
    lo = torch.quantile(scores, 0.01, dim=0)
    hi = torch.quantile(scores, 0.99, dim=0)
    span = hi - lo
    colours = torch.where(span > 1e-12, (scores - lo) / span.clamp_min(1e-12), torch.full_like(scores, 0.5))
    return colours.clamp(0.0, 1.0).contiguous()


def codebook_embedding(model: torch.nn.Module) -> torch.Tensor | None:
    """The VQ codebook weight of a GLM-Image AR model, or None where it cannot be read."""
    for path in CODEBOOK_PATHS:
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, torch.nn.Embedding):
            return module.weight
    for name, module in model.named_modules():  # other layouts: any quantizer's embedding
        if name.endswith("quantize.embedding") and isinstance(module, torch.nn.Embedding):
            return module.weight
    return None


_MODEL_PALETTES: "weakref.WeakKeyDictionary[torch.nn.Module, torch.Tensor]" = weakref.WeakKeyDictionary()
_MODEL_PALETTES_LOCK = threading.Lock()


def model_palette(model: torch.nn.Module, codebook_size: int) -> torch.Tensor | None:
    """The codebook palette of a loaded AR model, computed on first use and kept with the model.

    Cached per model object (weakly: it goes when the model goes), so a graph that runs
    again, or a preview node fed the same model, reuses it. None when the model has no
    readable codebook of `codebook_size` entries (e.g. weights on the meta device); callers
    then use `hue_palette`.
    """
    with _MODEL_PALETTES_LOCK:
        cached = _MODEL_PALETTES.get(model)
        if cached is not None and cached.shape[0] == codebook_size:
            return cached
        weight = codebook_embedding(model)
        if weight is None or weight.device.type == "meta" or weight.shape[0] != codebook_size:
            return None
        with torch.no_grad():
            colours = codebook_palette(weight)
        _MODEL_PALETTES[model] = colours
        return colours


def _colours(codebook_size: int, palette: torch.Tensor | None) -> torch.Tensor:
    """[codebook_size, 3] float colours on the CPU: `palette` checked, or the fixed hues when None."""
    if palette is None:
        return hue_palette(codebook_size)
    if palette.ndim != 2 or tuple(palette.shape) != (codebook_size, 3):
        raise GlmImageInputError(f"palette must be [{codebook_size}, 3] colours for a codebook of "
                                 f"{codebook_size} ids, got shape {tuple(palette.shape)}")
    return palette.to("cpu", torch.float32)


# --- pictures ---------------------------------------------------------------------------
def render_grid(grids: torch.Tensor, codebook_size: int, cell: int = 8,
                palette: torch.Tensor | None = None) -> torch.Tensor:
    """[N,H,W] ids -> [N, H*cell, W*cell, 3] float 0..1 (ComfyUI IMAGE layout).

    `palette` ([codebook_size, 3], from `model_palette`) colours by codebook similarity;
    None uses the fixed `hue_palette`.
    """
    if grids.ndim == 2:
        grids = grids.unsqueeze(0)
    if grids.ndim != 3 or grids.numel() == 0:
        raise GlmImageInputError(f"token grid must be [N, H, W] with tokens, got shape {tuple(grids.shape)}")
    if cell < 1:
        raise GlmImageInputError(f"cell size must be >= 1 px, got {cell}")
    if int(grids.min()) < 0 or int(grids.max()) >= codebook_size:
        raise GlmImageInputError(f"token ids must be in 0..{codebook_size - 1}, "
                                 f"got {int(grids.min())}..{int(grids.max())}")
    colours = _colours(codebook_size, palette)
    image = colours[grids.long().cpu()]  # [N,H,W,3]
    return image.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2).contiguous()


class LiveGridPreview:
    """Pictures of the grid the model is filling, from the ids it has sampled so far.

    Text-to-image samples the small preview grid first, then the large grid; the picture
    shows whichever is being filled at the moment (the preview grid up to and including its
    last token, then the large grid). Cells not sampled yet are dark grey, ids that are not
    codebook entries magenta. Each call returns a new PIL image (ComfyUI encodes it later,
    on its event loop, so an image once handed over is never changed), sized so that its
    longest side is about `max_px` with every token a whole square of pixels.
    """

    def __init__(self, shape: GridShape, mode: str, codebook_size: int,
                 palette: torch.Tensor | None = None, max_px: int = PREVIEW_MAX_PX) -> None:
        colours = _colours(codebook_size, palette)
        lut = (colours * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
        self._lut = np.concatenate([lut, np.array([UNFILLED_RGB, INVALID_RGB], dtype=np.uint8)])
        self._unfilled, self._invalid = codebook_size, codebook_size + 1
        self.codebook_size = codebook_size
        self.max_px = max(1, int(max_px))
        grids = []
        if mode == "t2i":
            grids.append((0,) + shape.preview)
        grids.append((shape.grid_offset(mode), shape.token_h, shape.token_w))
        self.grids = grids  # (offset among the generated ids, rows, cols), in sampling order

    def grid_for(self, sampled: int) -> tuple[int, int, int]:
        """(offset, rows, cols) of the grid that the `sampled`-th id went into."""
        for offset, rows, cols in reversed(self.grids):
            if sampled > offset:
                return offset, rows, cols
        return self.grids[0]

    def render(self, generated: torch.Tensor):
        """A PIL RGB image of the grid being filled, given the 1-D ids sampled so far."""
        from PIL import Image

        generated = generated.reshape(-1)
        offset, rows, cols = self.grid_for(int(generated.numel()))
        ids = generated[offset:offset + rows * cols].to("cpu", torch.long).numpy()
        cells = np.full(rows * cols, self._unfilled, dtype=np.int64)
        cells[:ids.size] = np.where((ids >= 0) & (ids < self.codebook_size), ids, self._invalid)
        rgb = self._lut[cells].reshape(rows, cols, 3)
        scale = max(1, self.max_px // max(rows, cols))
        return Image.fromarray(np.ascontiguousarray(rgb)).resize((cols * scale, rows * scale),
                                                                         Image.Resampling.NEAREST)
