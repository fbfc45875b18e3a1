"""Invert Pair: the structure and the appearance image inverted together, in the same model
calls (half the calls of two Invert nodes when the images have one size), with the inputs and
the result of an Invert node for each: the same two inversions, to float round-off. The
edit-friendly pair's calls wait for the node that needs them (sampling/deferred.py)."""
from dataclasses import replace

from .invert_ddim import CrossImageInvertDDIM
from .invert_ddpm import CrossImageInvertDDPM
from .sockets import InversionSocket, io

PAIR_OUTPUTS = [
    InversionSocket.Output(display_name="structure", tooltip="Inversion of the structure image; connect to "
                                                              "Cross-Image Sampler's structure."),
    InversionSocket.Output(display_name="appearance", tooltip="Inversion of the appearance image; connect to "
                                                               "Cross-Image Attention's appearance."),
]


def pair_schema(single: io.Schema, node_id: str, display_name: str, more: str = "") -> io.Schema:
    """The Invert node `single`'s schema with its latent input taken twice, and the two inversions
    out; `more`: the end of its description."""
    latents = [io.Latent.Input("structure", tooltip="The structure image (layout, shape and pose to keep), from VAE "
                                                    "Encode."),
               io.Latent.Input("appearance", tooltip="The appearance image (colours, textures, materials), from VAE "
                                                     "Encode. Of the structure's size, it is inverted in the same "
                                                     "model calls; of another size, in calls of its own.")]
    inputs = [part for entry in single.inputs for part in (latents if entry.id == "latent" else [entry])]
    description = (f"{single.description} Inverts the structure and the appearance image together: with one size, "
                   f"in the same model calls, half the work of two {single.display_name} nodes, with the same result."
                   f"{more}")
    return replace(single, node_id=node_id, display_name=display_name, description=description, inputs=inputs,
                   outputs=list(PAIR_OUTPUTS))


class CrossImageInvertPairDDIM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return pair_schema(CrossImageInvertDDIM.define_schema(), "CrossImageInvertPairDDIM", "Invert Pair (DDIM)")

    @classmethod
    def execute(cls, model, structure, appearance, positive, steps, scheduler, cfg, negative=None):
        pair = CrossImageInvertDDIM.invert(model, {"structure": structure, "appearance": appearance}, positive,
                                           steps, scheduler, cfg, negative)
        return io.NodeOutput(*(inversion for inversion, _ in pair))


class CrossImageInvertPairDDPM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return pair_schema(CrossImageInvertDDPM.define_schema(), "CrossImageInvertPairDDPM",
                           "Invert Pair (Edit-Friendly DDPM)",
                           " The model calls run when a node needs them: sampled with this prompt, negative prompt "
                           "and cfg, the Cross-Image Sampler makes both inversions in its own calls (one call a "
                           "step in all, the same result).")

    @classmethod
    def execute(cls, model, structure, appearance, positive, steps, scheduler, cfg, skip, seed, negative=None):
        # the model calls wait for the node that needs them (sampling/deferred.py)
        return io.NodeOutput(*CrossImageInvertDDPM.defer(model, {"structure": structure, "appearance": appearance},
                                                         positive, steps, scheduler, cfg, skip, seed, negative))
