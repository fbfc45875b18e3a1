"""The Cross-Image Sampler's guider: ComfyUI's CFGGuider plus the paper's per-step extras on
the output rows: appearance guidance (core/guidance.py) and AdaIN on latents (core/adain.py)."""
from dataclasses import replace

import comfy.model_management
import comfy.samplers
import torch

from ..core.adain import adain
from ..core.contrast import LEAST_BUDGET, budget_from_free_memory
from ..core.guidance import guidance_scale, guide
from ..core.packing import pack, unpack
from ..core.schedule import in_step_range, injects_structure, step_index
from .attention_patch import PLAN_KEY, CallPlan
from .checks import latent_mask
from .control_rows import control_on_outputs


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
    from it), and after the last step to the sampler's result. Made for one prediction per step
    (the samplers sampler.RETRACING allows).

    appearance_shape: the appearance latents' (C, H, W). When it is not the structure's, the
    appearances ride in the sampler's batch packed into rows of the structure's shape
    (core/packing.py), and each model call becomes two: the appearances alone at their own
    size, with the conditioning made for that size, lending their keys and values to the call
    of the other rows (the same attention as in one batch)."""

    def __init__(self, model_patcher, settings, layout, appearance_shape, guidance=None, latent_adain=None,
                 regions=None):
        super().__init__(model_patcher)
        self.settings, self.layout, self.guidance, self.latent_adain = settings, layout, guidance, latent_adain
        self.regions = regions  # core.regions.Regions at the latents' sizes, or None
        self.appearance_shape, self.appearance_conds = tuple(appearance_shape), None
        self.controlled = False  # whether the prompt carries a ControlNet or T2I adapter (inner_sample)

    def split(self, x):
        """(outputs, appearances at their own size, structures) of a sampler batch."""
        n, structures = self.layout.n_outputs, self.layout.n_structures
        return x[:n], unpack(x[n:x.shape[0] - structures], self.appearance_shape), x[x.shape[0] - structures:]

    def join(self, outputs, appearances, structures):
        return torch.cat([outputs, pack(appearances, tuple(outputs.shape[1:])), structures])

    def inner_sample(self, noise, latent_image, device, *args, **kwargs):
        """ComfyUI's, with the conditioning also made for the appearances' size when it differs
        (SDXL's size embeddings, areas and masks depend on it), and noting whether it carries
        controls."""
        self.controlled = any("control" in entry for entries in self.conds.values() for entry in entries)
        if self.appearance_shape != tuple(noise.shape[1:]):
            conds = {name: [dict(entry) for entry in entries] for name, entries in self.conds.items()}
            appearance = noise.new_zeros((self.layout.n_appearances,) + self.appearance_shape)
            self.appearance_conds = comfy.samplers.process_conds(self.inner_model, appearance, conds, device)
        return super().inner_sample(noise, latent_image, device, *args, **kwargs)

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
        outputs, appearances, _ = self.split(x)
        outputs, appearances = outputs * scale, appearances * scale
        if self.regions is None:
            x[:n] = adain(outputs, appearances, latent_mask(s.structure_mask, outputs, "structure_mask"),
                          latent_mask(s.appearance_mask, appearances, "appearance_mask"),
                          mask_names=("structure_mask", "appearance_mask")) / scale
            return
        # by regions, one after another: each region's output pixels take its appearance's statistics
        for r, (share, mask) in enumerate(zip(self.regions.shares, self.regions.appearance_masks)):
            outputs = adain(outputs, appearances[r:r + 1], share[None], None if mask is None else mask[None],
                            mask_names=("structure_mask", "appearance_mask"))
        x[:n] = outputs / scale

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
        s, layout = self.settings, self.layout
        outputs, appearances, structures = self.split(x)
        if len(structures) and ((not swapping and torch.equal(outputs, structures))
                                or not self.injects_from(index, steps)):
            structures = structures[:0]
        plains = outputs if plain else outputs[:0]
        own_call = tuple(appearances.shape[1:]) != tuple(outputs.shape[1:])
        from_structure = len(structures) > 0 and self.injects(index, steps)
        lent = {} if own_call and swapping and not from_structure else None
        budget = LEAST_BUDGET
        if swapping and s.contrast != 1.0:  # the contrast's chunks: as large as memory allows
            budget = budget_from_free_memory(comfy.model_management.get_free_memory(x.device))
        plan = CallPlan(step=index, layout=replace(layout, n_structures=len(structures), n_plain=len(plains),
                                                   appearances_lent=own_call),
                        swap=swapping, from_structure=from_structure, contrast=s.contrast, contrast_budget=budget,
                        regions=self.regions if swapping and not from_structure else None, lent=lent)
        if own_call:  # the appearances alone, at their size, lending their keys and values
            appearances = self.predict_rows(appearances, timestep, model_options, seed, self.appearance_conds,
                                            replace(plan, layout=replace(layout, n_outputs=0, n_structures=0),
                                                    swap=False, from_structure=False, lent=None, lend_to=lent))
            parts = [outputs, structures, plains]
        else:
            parts = [outputs, appearances, structures, plains]
        out = self.predict_rows(torch.cat(parts), timestep, model_options, seed, self.conds, plan)
        out = out.split([len(part) for part in parts])
        outputs, structures, plains = (out[0], *out[-2:])
        if not own_call:
            appearances = out[1]
        swap = self.join(outputs, appearances, structures if len(structures) else outputs[:layout.n_structures])
        return swap, plains if plain else None

    def predict_rows(self, x, timestep, model_options, seed, conds, plan):
        """ComfyUI's guided prediction (CFGGuider.predict_noise) for the rows x, with these
        conditions and the call's plan in transformer_options; controls act on the output rows
        only (control_rows.py)."""
        options = {**model_options, "transformer_options": {**model_options["transformer_options"], PLAN_KEY: plan}}
        if self.controlled:
            options["model_function_wrapper"] = control_on_outputs(plan.layout, model_options.get("model_function_wrapper"))
        return comfy.samplers.sampling_function(self.inner_model, x, timestep[:1].repeat(x.shape[0]),
                                                conds.get("negative"), conds.get("positive"), self.cfg,
                                                model_options=options, seed=seed)

    def injects(self, index, steps):
        """Whether step `index` is a structure injection step of the swap."""
        s = self.settings
        return in_step_range(index, steps, s.start, s.end) and injects_structure(index, steps, s.structure_every,
                                                                                  s.structure_until)

    def injects_from(self, index, steps):
        """Whether a structure injection step comes at or after step `index`."""
        return any(self.injects(i, steps) for i in range(index, steps))
