"""Run a sampler function over a sigma schedule through ComfyUI's own sampling machinery
(CFGGuider: model loading and memory management, conditioning, CFG, patches, progress)."""
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch


def make_guider(model, positive, negative, cfg: float, guider_class=comfy.samplers.CFGGuider):
    """A CFGGuider (or subclass); `negative` may be None only when cfg is 1 (no unconditional pass)."""
    conds = {"positive": positive}
    if negative is not None:
        conds["negative"] = negative
    elif cfg != 1.0:
        raise ValueError(f"negative: a negative conditioning is required when cfg is {cfg} (not 1.0)")
    guider = guider_class(model)
    guider.inner_set_conds(conds)
    guider.set_cfg(cfg)
    return guider


def run_sampler(guider, sampler, sigmas: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Sample from the model-space latent `start` (no noise added) along `sigmas`.

    Returns the result in LATENT space (what VAE Decode takes), on ComfyUI's intermediate device."""
    model = guider.model_patcher
    sigmas = sigmas.clone()  # some samplers write into the schedule (UniPC sets its last sigma)
    # CFGGuider.sample maps LATENT space into model space itself (process_latent_in).
    latent_image = model.model.process_latent_out(start)
    callback = latent_preview.prepare_callback(model, sigmas.shape[0] - 1)
    samples = guider.sample(torch.zeros_like(latent_image), latent_image, sampler, sigmas,
                            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    return samples.to(comfy.model_management.intermediate_device())


def run_inversion(model, latent: dict, positive, negative, cfg: float, schedule: torch.Tensor, invert):
    """Invert a VAE latent through ComfyUI's sampling machinery.

    invert(denoise, clean, report) computes (trajectory, noise maps or None) along `schedule`;
    denoise(x, sigma) is the guided model, report(k, denoised, x) drives the progress bar and
    previews. It runs as a ComfyUI sampler function, handed the schedule flipped (ascending) so
    that ComfyUI starts it from the clean latent without adding noise.
    Returns (trajectory, noise, noisy LATENT), the tensors on ComfyUI's intermediate device."""
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if samples.ndim != 4:
        raise ValueError(f"latent: expected an image latent (batch, channels, height, width), got shape {tuple(samples.shape)}")
    guider = make_guider(model, positive, negative, cfg)
    record = {}

    def sampler_function(k_model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        ones = x.new_ones([x.shape[0]])

        def denoise(x_sigma, sigma):
            comfy.model_management.throw_exception_if_processing_interrupted()
            return k_model(x_sigma, sigma * ones, **extra_args)

        def report(k, denoised, x_now):
            if callback is not None:
                callback({"i": k, "denoised": denoised, "x": x_now})

        record["trajectory"], record["noise"] = invert(denoise, x, report)
        return record["trajectory"][0]

    clean = model.model.process_latent_in(samples.float())
    noisy = run_sampler(guider, comfy.samplers.KSAMPLER(sampler_function), schedule.flip(0), clean)
    device = comfy.model_management.intermediate_device()
    noise = record["noise"]
    return (record["trajectory"].float().to(device), None if noise is None else noise.float().to(device),
            {"samples": noisy})
