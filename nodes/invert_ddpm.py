"""Invert (Edit-Friendly DDPM): the paper's inversion, with a noise map per step."""
import comfy.model_sampling
import comfy.samplers
import torch

from ..core.edit_friendly import draws, edit_friendly_invert
from ..core.inversion import Inversion
from .inputs import numbers
from .invert_ddim import inversion_inputs, inversion_outputs
from .sampling.identity import model_key
from .sampling.deferred import DeferredInversions, Pending
from .sampling.runner import model_latents, require_negative, run_inversion
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
        run, _ = cls.inverter(model, positive, steps, scheduler, cfg, skip, seed, negative)
        return run(latents)

    @classmethod
    def defer(cls, model, latents, positive, steps, scheduler, cfg, skip, seed, negative=None) -> list:
        """The Inversions of `latents` as `invert` makes them, pending: their model calls run
        when a node first needs them (sampling/deferred.py). Bad inputs are refused now."""
        run, (sigmas, method, key, cfg) = cls.inverter(model, positive, steps, scheduler, cfg, skip, seed, negative)
        require_negative(negative, cfg)
        job = DeferredInversions(lambda names: {name: inversion for name, (inversion, _) in
                                                zip(names, run({name: latents[name] for name in names}))},
                                 latents, (positive, negative, cfg))
        return [Inversion(sigmas=sigmas, trajectory=torch.stack(draws(clean, sigmas, fresh_draws(seed, sigmas, clean),
                                                                      method)),
                          model_key=key, method=method, pending=Pending(job, name))
                for name, clean in zip(latents, model_latents(model, latents))]

    @classmethod
    def inverter(cls, model, positive, steps, scheduler, cfg, skip, seed, negative):
        """(run, (sigmas, method, model key, cfg)): run(latents) gives [(Inversion, noisy LATENT)]."""
        (cfg,) = numbers(cls, cfg=cfg)
        sampling = model.get_model_object("model_sampling")
        schedule = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).float().cpu()
        # some schedulers give fewer steps than asked (beta: 847 of 1000), some one more
        if not 0 <= skip < schedule.shape[0] - 1:
            raise ValueError(f"skip: must be less than the {schedule.shape[0] - 1} steps the {scheduler} scheduler "
                             f"gives for steps={steps}, got {skip}")
        sigmas = schedule[skip:]

        # on a flow (Flux, ...) the analogue for ComfyUI's euler_ancestral step (core/edit_friendly.py)
        flow = isinstance(sampling, comfy.model_sampling.CONST)
        if flow and getattr(sampling, "noise_scale", 1.0) != 1.0:
            raise ValueError(f"model: its sampling scales the noise by {sampling.noise_scale}, which the samplers "
                             "apply on some ComfyUI releases and not on others; invert and sample without it")
        method = "flow" if flow else "ddpm"

        def invert(denoise, parts, report):
            fresh = torch.cat([fresh_draws(seed, sigmas, part) for part in parts], dim=1)
            return edit_friendly_invert(denoise, torch.cat(parts), sigmas, fresh.to(parts[0]), report, method)
        key = model_key(model)

        def run(latents):
            return [(Inversion(sigmas=sigmas, trajectory=trajectory, model_key=key, method=method, noise=noise,
                               guidance=guidance), noisy)
                    for trajectory, noise, noisy, guidance in run_inversion(model, latents, positive, negative, cfg,
                                                                            sigmas, invert)]
        return run, (sigmas, method, key, cfg)


def fresh_draws(seed: int, sigmas: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The standard normal draws of a latent's steps, from its own generator seeded with `seed`."""
    return torch.randn((sigmas.shape[0] - 1,) + tuple(clean.shape), generator=torch.Generator().manual_seed(seed))
