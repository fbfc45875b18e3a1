"""Run a sampler function over a sigma schedule through ComfyUI's own sampling machinery
(CFGGuider: model loading and memory management, conditioning, CFG, patches, progress)."""
import comfy.model_management
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
    # CFGGuider.sample maps LATENT space into model space itself (process_latent_in).
    latent_image = model.model.process_latent_out(start)
    callback = latent_preview.prepare_callback(model, sigmas.shape[0] - 1)
    samples = guider.sample(torch.zeros_like(latent_image), latent_image, sampler, sigmas,
                            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    return samples.to(comfy.model_management.intermediate_device())
