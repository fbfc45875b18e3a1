"""The pack's node sockets in ComfyUI's V3 schema (comfy_api), as both ComfyUI releases the
pack supports (0.3.75 and 0.33.0) have it: `comfy_api.latest.io` exists in both (0.33.0 also
names it IO); only 0.33.0's inputs take `advanced=`."""
import inspect

from comfy_api.latest import io

CATEGORY = "cross_image_attention"

# The pack's own socket types; the type names are what saved workflows hold.
InversionSocket = io.Custom("CROSS_IMAGE_INVERSION")  # carries a core.inversion.Inversion
ContrastSocket = io.Custom("CROSS_IMAGE_CONTRAST")    # carries settings.ContrastSettings
GuidanceSocket = io.Custom("CROSS_IMAGE_GUIDANCE")    # carries settings.GuidanceSettings
LatentAdaINSocket = io.Custom("CROSS_IMAGE_LATENT_ADAIN")  # carries settings.LatentAdaINSettings
RegionsSocket = io.Custom("CROSS_IMAGE_REGIONS")  # carries a tuple of settings.AppearanceRegion
PositionsSocket = io.Custom("CROSS_IMAGE_POSITIONS")  # carries settings.PositionSettings

# Tuning inputs most users never touch: the editor folds them away where it knows the flag
# (0.33.0); on 0.3.75, whose inputs have no such argument, they are ordinary inputs.
ADVANCED = {"advanced": True} if "advanced" in inspect.signature(io.Float.Input.__init__).parameters else {}

# An inversion's seed stays put between queues: the editor's "control after generate" widget
# (which it gives every input named seed, set to randomize) would draw a new one each time and
# re-invert both images. Where the frontend takes a mode (0.33.0) it starts at fixed; where it
# takes only on or off (0.3.75), the widget is left out.
_CONTROL = getattr(io, "ControlAfterGenerate", None)
FIXED_SEED = {"control_after_generate": _CONTROL.fixed if _CONTROL is not None else False}
