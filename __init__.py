"""Cross-Image Attention for ComfyUI: zero-shot appearance transfer (Alaluf et al., SIGGRAPH 2024)."""
from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
