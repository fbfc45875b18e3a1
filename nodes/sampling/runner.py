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
    require_negative(negative, cfg)
    conds = {"positive": positive}
    if negative is not None:
        conds["negative"] = negative
    guider = guider_class(model)
    guider.inner_set_conds(conds)
    guider.set_cfg(cfg)
    return guider


def require_negative(negative, cfg: float) -> None:
    if negative is None and cfg != 1.0:
        raise ValueError(f"negative: a negative conditioning is required when cfg is {cfg} (not 1.0)")


def run_sampler(guider, sampler, sigmas: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Sample from the model-space latent `start` (no noise added) along `sigmas`.

    Returns the result in LATENT space (what VAE Decode takes), on ComfyUI's intermediate device."""
    model = guider.model_patcher
    sigmas = sigmas.clone()  # some samplers write into the schedule (UniPC sets its last sigma)
    # CFGGuider.sample maps LATENT space into model space itself (process_latent_in).
    latent_image = model.model.process_latent_out(start)
    callback = latent_preview.prepare_callback(model, sigmas.shape[0] - 1)
    samples = guider.sample(start_noise(model, start, sigmas[0]), latent_image, sampler, sigmas,
                            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    return samples.to(comfy.model_management.intermediate_device())


def start_noise(model, start: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The noise with which a sampler starts exactly at `start` (model space) at noise level
    `sigma`, the latent image being `start` too: ComfyUI's samplers start at
    model_sampling.noise_scaling(sigma, noise, latent) = a noise + b latent, with b = 1 on
    eps and v models (zero noise) and b = 1 - sigma on flows (the noise is the latent)."""
    sampling = model.get_model_object("model_sampling")
    one, zero = torch.ones(1, 1), torch.zeros(1, 1)
    a = float(sampling.noise_scaling(sigma.reshape(1).cpu(), one.clone(), zero.clone()))
    b = float(sampling.noise_scaling(sigma.reshape(1).cpu(), zero.clone(), one.clone()))
    return start * ((1 - b) / a) if a != 0 and b != 1 else torch.zeros_like(start)


def run_inversion(model, latents: dict, positive, negative, cfg: float, schedule: torch.Tensor, invert) -> list:
    """Invert VAE latents through ComfyUI's sampling machinery: the latents of one shape
    together, in the same model calls (a UNet call on a few latents costs about what a call on
    one does), those of other shapes in calls of their own.

    invert(denoise, parts, report) computes (trajectory, noise maps or None) of the batch
    torch.cat(parts) along `schedule`; denoise(x, sigma) is the guided model, report(k,
    denoised, x) drives the progress bar and previews. It runs as a ComfyUI sampler function,
    handed the schedule flipped (ascending) so that ComfyUI starts it from the clean latent
    without adding noise.
    Returns (trajectory, noise, noisy LATENT, the embedded guidance its model calls got or
    None) for each latent, the tensors on ComfyUI's intermediate device. latents: {input name:
    LATENT}, the names for errors."""
    cleans = model_latents(model, latents)
    results = [None] * len(cleans)
    for shape in dict.fromkeys(tuple(clean.shape[1:]) for clean in cleans):
        members = [i for i, clean in enumerate(cleans) if tuple(clean.shape[1:]) == shape]
        parts = [cleans[i] for i in members]
        trajectory, noise, noisy, guidance = invert_batch(model, parts, positive, negative, cfg, schedule, invert)
        sizes = [len(part) for part in parts]
        for i, t, z, x in zip(members, trajectory.split(sizes, 1), split_or_none(noise, sizes), noisy.split(sizes)):
            results[i] = t, z, {"samples": x}, guidance
    return results


def model_latents(model, latents: dict) -> list:
    """The VAE latents {input name: LATENT} in model space (process_latent_in), float32; refuses
    what an inversion cannot take, naming the input."""
    cleans = []
    for name, latent in latents.items():
        if latent.get("noise_mask") is not None:
            raise ValueError(f"{name}: this LATENT carries a noise mask (Set Latent Noise Mask, the inpainting "
                             "wiring), which an inversion cannot honour: it inverts the whole image. Connect VAE "
                             "Encode's LATENT directly, and give the mask to Cross-Image Attention (structure_mask "
                             "or appearance_mask) to keep the transfer to it")
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        if not (samples.ndim == 4 or samples.ndim == 5 and samples.shape[2] == 1):  # one frame: Qwen-Image's
            raise ValueError(f"{name}: expected an image latent (batch, channels, height, width), got shape "
                             f"{tuple(samples.shape)}")
        cleans.append(model.model.process_latent_in(samples.float()))
    return cleans


def split_or_none(t, sizes):
    return [None] * len(sizes) if t is None else t.split(sizes, 1)


def invert_batch(model, parts, positive, negative, cfg, schedule, invert):
    """(trajectory, noise or None, noisy latent, embedded guidance or None) of the latents
    `parts` (model space, one shape) inverted as one batch (run_inversion)."""
    record = {}
    guider = make_guider(noting_guidance(model, record), positive, negative, cfg)

    def sampler_function(k_model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        ones = x.new_ones([x.shape[0]])

        def denoise(x_sigma, sigma):
            comfy.model_management.throw_exception_if_processing_interrupted()
            return k_model(x_sigma, sigma * ones, **extra_args)

        def report(k, denoised, x_now):
            if callback is not None:
                callback({"i": k, "denoised": denoised, "x": x_now})

        # the sampler hands back torch.cat(parts) on the model's device
        record["trajectory"], record["noise"] = invert(denoise, list(x.split([len(p) for p in parts])), report)
        return record["trajectory"][0]

    run_sampler(guider, comfy.samplers.KSAMPLER(sampler_function), schedule.flip(0), torch.cat(parts))
    device = comfy.model_management.intermediate_device()
    # the noisiest latent, in LATENT space (a flow sampler's result at sigma 1 would be divided by 1 - sigma)
    noisy = model.model.process_latent_out(record["trajectory"][0]).to(device)
    noise = record["noise"]
    return (record["trajectory"].float().to(device), None if noise is None else noise.float().to(device), noisy,
            record.get("guidance"))


def noting_guidance(model, record: dict):
    """A clone of `model` whose calls note in record["guidance"] the embedded guidance its
    conditional rows get (c["guidance"]: Flux-dev's, from the prompt or the model's default),
    which sampling must give the same latents again."""
    previous = model.model_options.get("model_function_wrapper")

    def wrapper(apply_model, args):
        guidance, kinds = args["c"].get("guidance"), args["cond_or_uncond"]
        if guidance is not None:
            rows = guidance.reshape(len(kinds), -1)[[i for i, kind in enumerate(kinds) if kind == 0]]
            values = sorted(set(rows.flatten().tolist()) | ({record["guidance"]} if "guidance" in record else set()))
            if len(values) > 1:
                raise ValueError(f"positive: its entries carry different guidance values {values}; invert with one")
            record["guidance"] = values[0]
        if previous is not None:
            return previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])
    noted = model.clone()
    noted.set_model_unet_function_wrapper(wrapper)
    return noted
