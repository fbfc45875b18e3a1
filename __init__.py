"""Cross-Image Attention for ComfyUI: zero-shot appearance transfer (Alaluf et al., SIGGRAPH 2024)."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
