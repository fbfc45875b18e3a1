"""Invert (Edit-Friendly DDPM): the paper's inversion, with a noise map per step."""
import comfy.model_sampling
import comfy.samplers
import torch

from ..core.edit_friendly import edit_friendly_invert
from ..core.inversion import Inversion
from .inputs import numbers
from .invert_ddim import inversion_inputs, inversion_outputs
from .sampling.identity import model_key
from .sampling.runner import run_inversion
from .sockets import ADVANCED, CATEGORY, FIXED_SEED, io


class CrossImageInvertDDPM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageInvertDDPM",
            display_name="Invert (Edit-Friendly DDPM)",
            category=CATEGORY,
            description=("Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024), the paper's default: every "
                         "step's latent is drawn independently from the image and a noise map per step records how a "
                         "DDPM step lands on the next one. Sample with sampler 'ddpm': the sampler replays the "
                         "structure's noise maps for the output."),
            inputs=inversion_inputs(
                100, 3.5, "Steps of the schedule (paper: 100); the first `skip` of them are not used.",
                "Classifier-free guidance of the noise predictions (paper: 3.5, with an empty negative prompt).",
                extra=[io.Int.Input("skip", default=32, min=0, max=999, **ADVANCED,
                                    tooltip="Steps skipped at the noisy end: sampling starts at step skip (paper: 32 "
                                            "of 100, t = 671). More skip keeps more of the structure image."),
                       io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, **ADVANCED, **FIXED_SEED,
                                    tooltip="Seed of the independent noise draws; the same seed gives the same "
                                            "inversion.")]),
            outputs=inversion_outputs("The noisy latent sampling starts from (after the skipped steps)."),
        )

    @classmethod
    def execute(cls, model, latent, positive, steps, scheduler, cfg, skip, seed, negative=None):
        ((inversion, noisy),) = cls.invert(model, {"latent": latent}, positive, steps, scheduler, cfg, skip, seed,
                                           negative)
        return io.NodeOutput(inversion, noisy)

    @classmethod
    def invert(cls, model, latents, positive, steps, scheduler, cfg, skip, seed, negative=None) -> list:
        """[(Inversion, noisy LATENT)] of each of `latents` ({input name: LATENT}), those of one
        shape in the same model calls (sampling/runner.run_inversion). Each latent draws its
        noise from its own generator seeded with `seed`: inverted together or apart, the same."""
        (cfg,) = numbers(cls, cfg=cfg)
        sampling = model.get_model_object("model_sampling")
        schedule = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).float().cpu()
        # some schedulers give fewer steps than asked (beta: 847 of 1000), some one more
        if not 0 <= skip < schedule.shape[0] - 1:
            raise ValueError(f"skip: must be less than the {schedule.shape[0] - 1} steps the {scheduler} scheduler "
                             f"gives for steps={steps}, got {skip}")
        sigmas = schedule[skip:]
        steps = sigmas.shape[0] - 1

        # on a flow (Flux, ...) the analogue for ComfyUI's euler_ancestral step (core/edit_friendly.py)
        flow = isinstance(sampling, comfy.model_sampling.CONST)
        if flow and getattr(sampling, "noise_scale", 1.0) != 1.0:
            raise ValueError(f"model: its sampling scales the noise by {sampling.noise_scale}, which the samplers "
                             "apply on some ComfyUI releases and not on others; invert and sample without it")
        method = "flow" if flow else "ddpm"

        def invert(denoise, parts, report):
            fresh = torch.cat([torch.randn((steps,) + tuple(part.shape), generator=torch.Generator().manual_seed(seed))
                               for part in parts], dim=1)
            return edit_friendly_invert(denoise, torch.cat(parts), sigmas, fresh.to(parts[0]), report, method)
        key = model_key(model)
        return [(Inversion(sigmas=sigmas, trajectory=trajectory, model_key=key, method=method, noise=noise,
                           guidance=guidance), noisy)
                for trajectory, noise, noisy, guidance in run_inversion(model, latents, positive, negative, cfg,
                                                                        sigmas, invert)]
