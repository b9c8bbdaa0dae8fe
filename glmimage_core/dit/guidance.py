"""Classifier-free guidance for GLM-Image, once: what the guided and the unguided rows see, and how they mix.

GLM-Image's unguided branch is not "empty prompt": its rows see the empty
text's glyph embeddings, DROP the prior tokens and do NOT read the source
images' keys/values, while the guided rows see the prompt's quoted text, keep
the tokens and read the sources (diffusers' GlmImagePipeline). `Branch` says
that once. The engine's loop (dit/sampling.py) turns branches into the rows of
one DiT forward (`rows_for`) and mixes the two predictions (`combine`);
ComfyUI's path (glmimage_comfy/token_conditioning.py) turns the same branches
into its positive and negative CONDITIONING, and ComfyUI's sampler batches and
mixes them itself (its cfg function, the same formula).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .forward import pad_glyphs


@dataclass(frozen=True)
class Branch:
    """One side of guidance: whether its rows see the prompt's glyph text, drop the prior tokens, read sources."""

    name: str
    sees_glyph_text: bool
    drops_prior: bool
    reads_sources: bool

    def glyph_prompt(self, prompt: str) -> str:
        """The text whose quoted parts this branch's glyph encoder sees (the unguided one: none)."""
        return prompt if self.sees_glyph_text else ""

    def flags(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([batch] prior dropped, [batch] sources read) as bool tensors, one entry per picture."""
        return (torch.full((batch,), self.drops_prior, dtype=torch.bool),
                torch.full((batch,), self.reads_sources, dtype=torch.bool))


GUIDED = Branch("positive", sees_glyph_text=True, drops_prior=False, reads_sources=True)
UNGUIDED = Branch("negative", sees_glyph_text=False, drops_prior=True, reads_sources=False)


def uses_guidance(scale: float) -> bool:
    """A guidance scale <= 1 turns guidance off (no unguided rows at all), as in diffusers."""
    return scale > 1.0


def branches_for(scale: float) -> tuple[Branch, ...]:
    """The branches a run evaluates at each step: both, or the guided one alone."""
    return (GUIDED, UNGUIDED) if uses_guidance(scale) else (GUIDED,)


def rows_for(parts: list[tuple[Branch, torch.Tensor]], prior_ids: torch.Tensor, has_sources: bool) -> dict:
    """`forward.velocity` keyword arguments for one forward over the branches in `parts` (branch, its [1, L, D]
    glyph embeddings), each repeated for every picture of `prior_ids` [B, S]: branch-major rows, glyphs padded
    to one length."""
    batch = prior_ids.shape[0]
    glyphs, lengths = pad_glyphs([embeds for _, embeds in parts for _ in range(batch)])
    flags = [branch.flags(batch) for branch, _ in parts]
    return dict(glyphs=glyphs, glyph_lengths=lengths, prior_ids=prior_ids.repeat(len(parts), 1),
                prior_drop=torch.cat([drop for drop, _ in flags]),
                read_sources=torch.cat([read for _, read in flags]) if has_sources else None)


def combine(predictions: list[torch.Tensor], scale: float) -> torch.Tensor:
    """The guided velocity: unguided + scale * (guided - unguided); the guided one alone without guidance."""
    if len(predictions) == 1:
        return predictions[0]
    guided, unguided = predictions
    return unguided + scale * (guided - unguided)
