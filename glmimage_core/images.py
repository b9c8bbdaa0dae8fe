"""Source images for image-to-image: ComfyUI IMAGE tensors -> what both stages see.

Both stages must see the same pixels at sizes that line up: the AR processor
halves an image and cuts it into 16 px patches (one token per 32 px of the
source), and the decoder's VAE + DiT patches make one latent token per 16 px.
So every source is resized once, here, to a multiple of 32 px inside the
processor's pixel bounds; the AR model then sees it without further resizing
and the decoder resizes to exactly the same size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import GlmImageInputError
from .shapes import PIXELS_PER_TOKEN

MAX_ASPECT = 4.0


def split_batch(image: torch.Tensor, name: str = "image") -> list[torch.Tensor]:
    """A ComfyUI IMAGE ([B,H,W,C] or [H,W,C], 0..1) -> a list of [H,W,C] tensors."""
    if not isinstance(image, torch.Tensor):
        raise GlmImageInputError(f"{name} must be an IMAGE tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise GlmImageInputError(f"{name} must be [batch, height, width, channels], got shape {tuple(image.shape)}")
    b, h, w, c = image.shape
    if b == 0 or h == 0 or w == 0:
        raise GlmImageInputError(f"{name} is empty (shape {tuple(image.shape)}): connect an image with pixels")
    if c not in (1, 2, 3, 4):
        raise GlmImageInputError(f"{name} has {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    return list(image.unbind(0))


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """[H,W,C] -> [H,W,3] float32 0..1: grey is repeated, alpha is composited over white."""
    image = image.detach().to("cpu", torch.float32).clamp(0, 1)
    c = image.shape[-1]
    if c in (2, 4):
        alpha = image[..., -1:]
        image = image[..., :-1] * alpha + (1.0 - alpha)
        c -= 1
    if c == 1:
        image = image.expand(*image.shape[:-1], 3)
    return image.contiguous()


def resize_rgb(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[H,W,3] -> [height,width,3] with antialiased bicubic; a no-op at the same size."""
    if tuple(image.shape[:2]) == (height, width):
        return image
    chw = image.permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(chw, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out.squeeze(0).permute(1, 2, 0).clamp(0, 1).contiguous()


def source_pixels(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """A source image ([H,W,C] 0..1) as the decoder reads it: RGB at 32 px per token of its [h, w] source grid.

    The same conversion and resize as the AR stage's (`to_rgb` + `resize_rgb`), so both stages look at
    the same picture; a picture already at the size is kept bit for bit. [h*32, w*32, 3] float 0..1."""
    return resize_rgb(to_rgb(image), PIXELS_PER_TOKEN * grid.shape[0], PIXELS_PER_TOKEN * grid.shape[1])


def to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


def source_size(height: int, width: int, min_pixels: int, max_pixels: int, name: str = "image") -> tuple[int, int]:
    """The size a source image is resized to: multiples of 32 px, the aspect kept,
    the short side at least sqrt(min_pixels) and the long side at most sqrt(max_pixels)."""
    aspect = max(height, width) / min(height, width)
    if aspect > MAX_ASPECT:
        raise GlmImageInputError(f"{name} is {width}x{height} px: GLM-Image takes aspect ratios up to "
                                 f"{MAX_ASPECT:g}:1; crop it first")
    shortest = int(round(math.sqrt(min_pixels)))
    longest = int(round(math.sqrt(max_pixels)))
    scale = 1.0
    if min(height, width) < shortest:
        scale = shortest / min(height, width)
    if max(height, width) * scale > longest:
        scale = longest / max(height, width)
    m = PIXELS_PER_TOKEN
    h = max(m, int(round(height * scale / m)) * m)
    w = max(m, int(round(width * scale / m)) * m)
    while min(h, w) < shortest:  # rounding down may undershoot the bound
        h, w = (h + m, w) if h <= w else (h, w + m)
    while max(h, w) > longest:
        h, w = (h - m, w) if h >= w else (h, w - m)
    return h, w


@dataclass
class SourceImage:
    """One source image, resized once; `pixels` [H,W,3] float 0..1 is what both stages use."""

    pixels: torch.Tensor

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // PIXELS_PER_TOKEN, self.width // PIXELS_PER_TOKEN

    def pil(self) -> Image.Image:
        return to_pil(self.pixels)


def processor_pixel_bounds(image_processor) -> tuple[int, int]:
    size = getattr(image_processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    return int(get("shortest_edge", 512 * 512)), int(get("longest_edge", 2048 * 2048))


def prepare_sources(images: list[torch.Tensor], image_processor) -> list[SourceImage]:
    """Resize every source once, to the size the processor will then use as it is."""
    min_pixels, max_pixels = processor_pixel_bounds(image_processor)
    sources = []
    for i, image in enumerate(images):
        rgb = to_rgb(image)
        h, w = source_size(rgb.shape[0], rgb.shape[1], min_pixels, max_pixels, name=f"source image {i + 1}")
        sources.append(SourceImage(resize_rgb(rgb, h, w)))
    return sources
