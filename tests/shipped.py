"""What the repository ships (tools/shipped_files.py), as the tests use it."""
import copy

from shipped_files import EXAMPLE_IMAGES, REPO, WORKFLOWS  # noqa: F401

MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae")  # Flux's model folders, beside the checkpoints
IMAGE_SIZE = (128, 96)  # example inputs for engine runs: small and non-square, to keep CPU runs short

# What a workflow saved before fast mode was retired holds after its other widget values: on the
# Invert nodes the seed's control value (DDPM) and keep_keys_values, on Cross-Image Attention mode.
RETIRED_WIDGET_VALUES = {"CrossImageInvertDDPM": ["fixed", ""], "CrossImageInvertDDIM": [""],
                         "CrossImageAttention": ["exact"]}


def with_retired_inputs(workflow: dict) -> dict:
    """`workflow` as the previous version of the nodes saved it."""
    old = copy.deepcopy(workflow)
    for node in old["nodes"]:
        node["widgets_values"] = list(node.get("widgets_values") or []) + RETIRED_WIDGET_VALUES.get(node["type"], [])
    return old
