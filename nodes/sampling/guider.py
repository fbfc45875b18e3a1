"""The Cross-Image Sampler's guider: ComfyUI's CFGGuider, running each step's model calls as
core/plan.py plans them, with the paper's per-step extras on the output rows: appearance
guidance (core/guidance.py) and AdaIN on latents (core/adain.py)."""
import comfy.model_management
import comfy.samplers
import torch

from ...core.adain import adain_by_regions
from ...core.guidance import guide
from ...core.plan import plan_step
from ...core.schedule import step_index, transfer_steps
from .control import on_outputs
from .patch import PLAN_KEY


class CrossImageGuider(comfy.samplers.CFGGuider):
    """Samples the batch of core/rows.SamplerRows. At each model call it asks plan_step for the
    step's plan and runs it: the appearances' own call first when they run apart (at their own
    size, with the conditioning made for that size, lending their keys and values), then the
    main call with the plan in transformer_options, where the patched sites read it.

    transfer: the Cross-Image Attention settings (core.settings.TransferSettings); architecture:
    the model's adapter (architecture.py), which names sites that did not run; regions: the
    transfer's core.regions.RegionMaps or None; adain_masks: latent AdaIN's masks at latent
    size (structure, appearance) without regions; inversion_guidance: the embedded guidance the
    inversions were made with (control.py), or None; drawn: the inversions made in the
    sampling calls (deferred.DrawnRows: the appearance and structure rows put on their draws
    before every call, the structure rows' predictions noted for the outputs' noise), or None.

    Latent AdaIN: ComfyUI's samplers have no hook between steps, so the match after a step is
    applied, in place, to the latent handed to the next model call (the sampler continues from
    it), and after the last step to the sampler's result. Made for one prediction per step (the
    samplers sampler.RETRACING allows)."""

    def __init__(self, model_patcher, transfer, architecture, rows, guidance=None, latent_adain=None, regions=None,
                 adain_masks=(None, None), inversion_guidance=None, drawn=None):
        super().__init__(model_patcher)
        self.transfer, self.architecture, self.rows = transfer, architecture, rows
        self.guidance, self.latent_adain, self.regions, self.adain_masks = guidance, latent_adain, regions, adain_masks
        self.inversion_guidance, self.drawn = inversion_guidance, drawn
        self.steps, self.appearance_conds, self.steered = None, None, False

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, *args, **kwargs):
        """ComfyUI's, with the conditioning also made for the appearances' size when it differs
        (SDXL's size embeddings, areas and masks depend on it), and the transfer's steps decided
        (a control on the prompt steers the outputs from the first step)."""
        self.steered = any("control" in entry for entries in self.conds.values() for entry in entries)
        self.steps = transfer_steps(sigmas.shape[0] - 1, self.transfer, self.guidance, self.latent_adain, self.steered,
                                    inverting=self.drawn is not None)
        if self.rows.appearances_apart:
            conds = {name: [dict(entry) for entry in entries] for name, entries in self.conds.items()}
            appearance = noise.new_zeros((self.rows.appearances,) + tuple(self.rows.appearance_shape))
            self.appearance_conds = comfy.samplers.process_conds(self.inner_model, appearance, conds, device)
        return super().inner_sample(noise, latent_image, device, sampler, sigmas, *args, **kwargs)

    def match_appearance(self, x, finished_step, sigma):
        """AdaIN of the output rows of x (model space, noise level sigma) after step
        `finished_step`, on the latents the network sees (model_sampling.calculate_input:
        x / sqrt(1 + sigma^2) for eps and v models), as the paper's code does."""
        if finished_step not in self.steps.adain:
            return
        sampling = self.model_patcher.get_model_object("model_sampling")
        scale = float(sampling.calculate_input(torch.tensor([float(sigma)]), torch.ones(1, 1)))
        outputs, appearances, _ = self.rows.split(x)
        shares, masks = (None, [self.adain_masks[1]]) if self.regions is None else \
            (self.regions.shares, self.regions.appearance_masks)
        x[:self.rows.outputs] = adain_by_regions(outputs * scale, appearances * scale, shares, masks,
                                                 self.adain_masks[0]) / scale

    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        """ComfyUI's sampling, then AdaIN after the last step; the result is in LATENT space
        (VAE Decode's), so the match is made in model space as on every other step."""
        samples = super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)
        if self.steps.count - 1 not in self.steps.adain:
            return samples
        model = self.model_patcher.model
        x = model.process_latent_in(samples)
        self.match_appearance(x, self.steps.count - 1, float(sigmas[-1]))
        return model.process_latent_out(x)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        schedule = model_options["transformer_options"]["sample_sigmas"]
        index = step_index(schedule, float(timestep.max()))
        if self.drawn is not None:  # where the inversion's steps land (to round-off)
            self.drawn.place(self.rows, x, index)
        if index > 0:
            self.match_appearance(x, index - 1, float(schedule[index]))
        free = comfy.model_management.get_free_memory(x.device)
        plan = plan_step(index, self.steps, self.rows, self.transfer, self.regions, free)
        outputs, appearances, structures = self.rows.split(x)
        if plan.apart is not None:  # the appearances alone, at their size, lending their keys and values
            appearances = self.predict_rows(appearances, timestep, model_options, seed, self.appearance_conds,
                                            plan.apart)
        rows = plan.main.rows
        batch = rows.join(outputs, appearances, structures[:rows.structures], outputs[:rows.plain])
        out, in_batch, ran_structures, plains = rows.split(
            self.predict_rows(batch, timestep, model_options, seed, self.conds, plan.main))
        if in_batch is not None:
            appearances = in_batch
        # structures not run take the outputs' prediction (equal to theirs, or never read again)
        predicted = self.rows.join(out, appearances, ran_structures if rows.structures else out)
        if self.drawn is not None:
            self.drawn.note(index, self.rows.split(predicted)[2].clone())
        if plan.guidance is not None:
            predicted[:rows.outputs] = guide(plains, out, plan.guidance)
        return predicted

    def predict_rows(self, x, timestep, model_options, seed, conds, plan):
        """ComfyUI's guided prediction (CFGGuider.predict_noise) for the rows x, with these
        conditions and the call's plan in transformer_options; controls act on the output rows
        only (control.py). Every patched site must have run the plan."""
        options = {**model_options, "transformer_options": {**model_options["transformer_options"], PLAN_KEY: plan}}
        if self.steered or self.inversion_guidance is not None:
            options["model_function_wrapper"] = on_outputs(plan.rows, model_options.get("model_function_wrapper"),
                                                           self.inversion_guidance)
        out = comfy.samplers.sampling_function(self.inner_model, x, timestep[:1].repeat(x.shape[0]),
                                               conds.get("negative"), conds.get("positive"), self.cfg,
                                               model_options=options, seed=seed)
        missing = [key for key in self.transfer.sites if key not in plan.ran]
        if missing:
            raise RuntimeError(f"model: Cross-Image Attention's patch did not run at "
                               f"{', '.join(map(self.architecture.site_name, missing))}: this ComfyUI release does "
                               "not call the hook it was installed at, so the transfer would silently be plain "
                               "sampling")
        return out
