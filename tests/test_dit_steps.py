"""The DiT sampling primitives both samplers call (glmimage_core/dit: schedule, guidance, fit), checked on their own.

The end-to-end parity (the engine's loop and ComfyUI's path against diffusers' GlmImagePipeline) is in
tests/test_decoding.py and tests/test_native.py; these tests pin each step to what it replaces.
"""

from __future__ import annotations

import pytest
import torch

from glmimage_core.demo.decoder import SCHEDULER_CONFIG, build_tiny_decoder
from glmimage_core.dit import fit
from glmimage_core.dit.guidance import GUIDED, UNGUIDED, branches_for, combine, rows_for
from glmimage_core.dit.loading import load_decoder
from glmimage_core.dit.schedule import (calculate_shift, dit_timestep, euler_step, glm_schedule, glm_timesteps,
                                        unshifted_sigmas)


@pytest.mark.parametrize("steps,seq_len", [(50, 4096), (7, 48), (1, 1024)])
def test_schedule_is_diffusers_scheduler_to_the_bit(steps, seq_len):
    """glm_schedule = FlowMatchEulerDiscreteScheduler.set_timesteps(timesteps, sigmas, mu), as GlmImagePipeline
    calls it; euler_step = its step; and ComfyUI's route (noise level -> dit_timestep) finds the DiT's timesteps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    mu = calculate_shift(seq_len)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    timesteps = glm_timesteps(steps)
    scheduler.set_timesteps(timesteps=timesteps, sigmas=timesteps / 1000, mu=mu)
    schedule = glm_schedule(steps, mu)
    assert len(schedule) == steps and schedule.sigmas[-1] == 0
    assert torch.equal(schedule.sigmas, scheduler.sigmas)
    assert torch.equal(schedule.timesteps, scheduler.timesteps - 1)
    torch.testing.assert_close(dit_timestep(schedule.sigmas[:-1], mu), schedule.timesteps, atol=2e-3, rtol=0)
    torch.testing.assert_close(unshifted_sigmas(steps) * 1000, torch.from_numpy(timesteps), atol=1e-4, rtol=0)

    gen = torch.Generator().manual_seed(steps)
    latents = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.bfloat16)
    velocity = torch.randn(2, 4, 6, 5, generator=gen)
    ours = latents
    for i, t in enumerate(scheduler.timesteps[:2]):
        theirs = scheduler.step(velocity, t, latents if i == 0 else theirs, return_dict=False)[0]
        ours = euler_step(ours, velocity, schedule.sigmas[i], schedule.sigmas[i + 1])
        assert ours.dtype == torch.float32 and torch.equal(ours, theirs)


def test_guidance_rows_and_mix():
    """Guided rows keep the tokens, see the prompt's glyphs and read the sources; unguided rows the opposite;
    one forward over both is branch-major, glyphs zero padded with their lengths."""
    assert branches_for(1.0) == (GUIDED,) and branches_for(0.0) == (GUIDED,) and branches_for(1.5) == (GUIDED, UNGUIDED)
    assert GUIDED.glyph_prompt('a "sign"') == 'a "sign"' and UNGUIDED.glyph_prompt('a "sign"') == ""
    prior_ids = torch.arange(6).view(2, 3)
    positive, negative = torch.ones(1, 3, 4), torch.full((1, 1, 4), 2.0)
    both = rows_for([(GUIDED, positive), (UNGUIDED, negative)], prior_ids, has_sources=True)
    assert both["glyphs"].shape == (4, 3, 4) and both["glyph_lengths"].tolist() == [3, 3, 1, 1]
    assert torch.equal(both["glyphs"][2:, 1:], torch.zeros(2, 2, 4))
    assert torch.equal(both["glyphs"][2:, :1], negative.expand(2, 1, 4))
    assert both["prior_drop"].tolist() == [False, False, True, True]
    assert both["read_sources"].tolist() == [True, True, False, False]
    assert torch.equal(both["prior_ids"], prior_ids.repeat(2, 1))
    alone = rows_for([(UNGUIDED, negative)], prior_ids, has_sources=False)
    assert alone["read_sources"] is None and alone["prior_drop"].tolist() == [True, True]
    guided, unguided = torch.tensor([3.0]), torch.tensor([1.0])
    assert combine([guided, unguided], 1.5).item() == 4.0 and combine([guided], 1.5) is guided


def test_vram_fit(tmp_path):
    """A step fits when its bytes (plus what is held beside it) are under the free figure; no figure: it fits,
    and the VAE is never tiled."""
    bundle = load_decoder(str(build_tiny_decoder(tmp_path / "dec")), dtype="fp32", device="cpu")
    dit = bundle.dit
    need = fit.step_bytes(dit, 256, 128, 2)
    assert need == fit.latent_step_bytes(dit, 32, 16, 2) and need > fit.step_bytes(dit, 256, 128, 1) > 0
    assert fit.rows_fit(dit, 256, 128, 2, None)
    assert fit.rows_fit(dit, 256, 128, 2, need + 1) and not fit.rows_fit(dit, 256, 128, 2, need)
    assert not fit.rows_fit(dit, 256, 128, 2, need + 1, extra_bytes=1)
    assert not fit.vae_decode_must_tile(bundle.vae_model.vae.config, 32, 16, 4, None)
    assert fit.vae_decode_must_tile(bundle.vae_model.vae.config, 32, 16, 4, 0)
