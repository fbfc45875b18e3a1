"""Self-Segmentation: object masks of an inverted image from the model's own attention
(core/segmentation.py), as MASKs for Latent AdaIN or for previewing."""
import torch
import torch.nn.functional as F

from ..core.schedule import to_step
from ..core.segmentation import self_segmentation, upsample
from .inputs import VAE_SCALE, numbers, require_inversion
from .sampling.attention_maps import record_attention
from .sockets import ADVANCED, CATEGORY, InversionSocket, io


class CrossImageSelfSegmentation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageSelfSegmentation",
            display_name="Self-Segmentation",
            category=CATEGORY,
            description=("Self-segmentation (paper, sec. 4.3): runs the model once on the inverted image at a chosen "
                         "step, clusters its pixels by their self-attention (k-means, the best of 10 starts) in the "
                         "finest decoder level's last layer, and keeps the clusters that attend to the prompt's noun "
                         "in the next coarser level's cross-attention, as the paper's code does. Gives MASKs for "
                         "Latent AdaIN and Cross-Image Attention (structure_mask, appearance_mask); preview them with "
                         "a mask preview node."),
            inputs=[
                io.Model.Input("model", tooltip="The model the image was inverted with."),
                io.Clip.Input("clip", tooltip="The text encoder of that model, to encode the prompt and find the "
                                              "noun."),
                InversionSocket.Input("inversion", tooltip="Inversion of the image to segment (structure or "
                                                           "appearance)."),
                io.String.Input("prompt", default="a photo of an animal", multiline=True,
                                tooltip="The prompt the image was inverted with."),
                io.String.Input("word", default="animal",
                                tooltip="The noun naming the object (the paper: the domain word); its pixels become "
                                        "the mask."),
                io.Float.Input("step", default=0.29, min=0.0, max=1.0, step=0.01, **ADVANCED,
                               tooltip="Fraction of the inversion's steps at which the attention is read (paper: step "
                                       "20 of 68). Later is less noisy."),
                io.Int.Input("clusters", default=5, min=2, max=32, **ADVANCED,
                             tooltip="k of the k-means (paper: 5). More clusters cut finer parts."),
                io.Float.Input("ratio", default=1.4, min=1.0, max=10.0, step=0.05, **ADVANCED,
                               tooltip="A cluster is the object when its attention to the noun is this many times the "
                                       "mean of the other clusters but the best (paper: 1.4). Higher keeps less."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The object mask at image size (1 = object), one per "
                                                                 "inverted image.")],
        )

    @classmethod
    def execute(cls, model, clip, inversion, prompt, word, step, clusters, ratio):
        step, clusters, ratio = numbers(cls, step=step, clusters=clusters, ratio=ratio)
        inversion = require_inversion(inversion, "inversion", model).resolved()
        if not word.strip():
            raise ValueError("word: name the object, e.g. 'animal'")
        index = min(to_step(step, inversion.steps), inversion.steps - 1)
        maps = record_attention(model, clip, prompt, word.strip(), inversion.trajectory[index],
                                float(inversion.sigmas[index]))
        grid, factor = maps["grid"], maps["factor"]
        masks = torch.stack([self_segmentation(maps["self"][b], upsample(maps["word"][b].reshape(maps["word_grid"]),
                                                                        maps["scale"], grid), clusters, ratio)
                             for b in range(maps["self"].shape[0])]).reshape(-1, 1, *grid)
        # each token covers factor x factor latent pixels (the last row and column may stick out)
        height, width = inversion.trajectory.shape[-2:]
        masks = F.interpolate(masks, scale_factor=factor * VAE_SCALE, mode="nearest")
        return io.NodeOutput(masks[:, 0, :height * VAE_SCALE, :width * VAE_SCALE])
