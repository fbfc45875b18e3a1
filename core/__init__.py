"""The Cross-Image Attention method as plain torch functions (no ComfyUI import).

Latents use the k-diffusion parameterisation ComfyUI samples in: a latent at noise level
sigma is x = x0 + sigma * eps, for eps- and v-prediction models alike.
"""
