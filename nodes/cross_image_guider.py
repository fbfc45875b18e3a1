"""The Cross-Image Sampler's guider: ComfyUI's CFGGuider plus the paper's per-step extras on
the output rows: appearance guidance (core/guidance.py) and AdaIN on latents (core/adain.py)."""
from dataclasses import replace

import comfy.samplers
import torch

from ..core.adain import adain
from ..core.guidance import guidance_scale, guide
from ..core.schedule import in_step_range, injects_structure, step_index
from .attention_patch import PLAN_KEY, CallPlan
from .checks import latent_mask


class CrossImageGuider(comfy.samplers.CFGGuider):
    """Samples the batch [outputs | appearances | structures] (attention_patch.BatchLayout) and
    makes every decision of each model call in one place: its step, the rows it runs, whether
    the output rows swap keys and values and from which rows, with what contrast. They go to
    the patched layers as the call's CallPlan, and to the per-step extras on the output rows:

    guidance: the output rows' prediction is no_swap + s_i (swap - no_swap); the no-swap
    prediction is made for the output rows alone (the swap does not change the other rows), by
    plain copies of them in the same model call.
    latent_adain: after each step in its range, the output latents take the appearance
    latents' per-channel statistics. ComfyUI's samplers have no hook between steps, so this is
    applied, in place, to the latent handed to the next model call (the sampler continues
    from it), and after the last step to the sampler's result. Made for one model call per step
    (the samplers sampler.RETRACING allows)."""

    def __init__(self, model_patcher, settings, layout, guidance=None, latent_adain=None):
        super().__init__(model_patcher)
        self.settings, self.layout, self.guidance, self.latent_adain = settings, layout, guidance, latent_adain

    def adain_after(self, step, steps):
        s = self.latent_adain
        return s is not None and in_step_range(step, steps, s.start, s.end)

    def match_appearance(self, x, finished_step, steps, sigma):
        """AdaIN of the output rows of x (model space, noise level sigma) after step
        `finished_step`, on the latents the network sees (model_sampling.calculate_input:
        x / sqrt(1 + sigma^2) for eps and v models), as the paper's code does."""
        s, n = self.latent_adain, self.layout.n_outputs
        if not self.adain_after(finished_step, steps):
            return
        sampling = self.model_patcher.get_model_object("model_sampling")
        scale = float(sampling.calculate_input(torch.tensor([float(sigma)]), torch.ones(1, 1)))
        appearance = x[n:n + self.layout.n_appearances] * scale
        x[:n] = adain(x[:n] * scale, appearance, latent_mask(s.structure_mask, x[:n], "structure_mask"),
                      latent_mask(s.appearance_mask, appearance, "appearance_mask"),
                      mask_names=("structure_mask", "appearance_mask")) / scale

    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        """ComfyUI's sampling, then AdaIN after the last step; the result is in LATENT space
        (VAE Decode's), so the match is made in model space as on every other step."""
        samples = super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)
        steps = sigmas.shape[0] - 1
        if not self.adain_after(steps - 1, steps):
            return samples
        model = self.model_patcher.model
        x = model.process_latent_in(samples)
        self.match_appearance(x, steps - 1, steps, float(sigmas[-1]))
        return model.process_latent_out(x)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        schedule = model_options["transformer_options"]["sample_sigmas"]
        steps, index = schedule.shape[0] - 1, step_index(schedule, float(timestep.max()))
        if index > 0:
            self.match_appearance(x, index - 1, steps, float(schedule[index]))
        s, g = self.settings, self.guidance
        swapping = in_step_range(index, steps, s.start, s.end)
        scale = None if g is None else guidance_scale(index, steps, g.scale, g.end_scale, g.start)
        guided = scale is not None and swapping  # without a swap, the plain prediction is the same
        swap, no_swap = self.predict_swap(x, timestep, model_options, seed, index, steps, swapping, guided)
        if not guided:
            return swap
        n = self.layout.n_outputs
        return torch.cat([guide(no_swap, swap[:n], scale), swap[n:]])

    def predict_swap(self, x, timestep, model_options, seed, index, steps, swapping, plain=False):
        """(the prediction with cross-image attention, for every row of x; with `plain`, the
        output rows' prediction without it, from extra rows of the same model call, else None).

        The structure rows are run only while they matter: before the swap, while they still
        equal the output rows (same start, same noise), they take the outputs' prediction, and
        after the last injection step nothing reads them, so they take it too. Batches of one to
        three latents cost a model call's overhead more than its arithmetic on a GPU, so one call
        with more rows is cheaper than two."""
        s, layout, n = self.settings, self.layout, self.layout.n_outputs
        outputs_and_appearances = n + layout.n_appearances
        structures = layout.n_structures
        if structures and ((not swapping and torch.equal(x[:n], x[outputs_and_appearances:]))
                           or not self.injects_from(index, steps)):
            structures = 0
        rows, plains = outputs_and_appearances + structures, n if plain else 0
        batch, times = (torch.cat([t[:rows], t[:plains]]) if plains else t[:rows] for t in (x, timestep))
        plan = CallPlan(step=index, layout=replace(layout, n_structures=structures, n_plain=plains), swap=swapping,
                        from_structure=structures > 0 and self.injects(index, steps),
                        contrast=s.contrast)
        options = {**model_options, "transformer_options": {**model_options["transformer_options"], PLAN_KEY: plan}}
        out = super().predict_noise(batch, times, options, seed)
        swap = out[:rows] if structures == layout.n_structures else torch.cat([out[:rows], out[:n]])
        return swap, out[rows:] if plain else None

    def injects(self, index, steps):
        """Whether step `index` is a structure injection step of the swap."""
        s = self.settings
        return in_step_range(index, steps, s.start, s.end) and injects_structure(index, steps, s.structure_every,
                                                                                  s.structure_until)

    def injects_from(self, index, steps):
        """Whether a structure injection step comes at or after step `index`."""
        return any(self.injects(i, steps) for i in range(index, steps))
