"""Writes the shipped workflows (workflows/*.json) from their description below: each a row of
labelled groups, left to right (inputs, inversion, attention settings, sampling, decode and
colour), each group a column of nodes, wired by name. Socket inputs and outputs come from the
node definitions ComfyUI reports, so every link joins matching types.

    COMFYUI_PATH=/path/to/ComfyUI python tools/workflow_builder.py [--out workflows]

The python must be one ComfyUI runs with (the tests' venv). Node ids follow the order below."""
import argparse
import json
import os
from dataclasses import dataclass, field

import headless

COLUMN_WIDTH, NODE_WIDTH, GAP, TITLE = 400, 320, 40, 36
COLOURS = {"Inputs": "#3f789e", "Inversion": "#8a6f9e", "Attention settings": "#a1309b", "Sampling": "#b06634",
           "Decode and colour": "#3f8e5e"}


@dataclass
class Node:
    key: str
    type: str
    title: str = None
    widgets: list = field(default_factory=list)
    links: dict = field(default_factory=dict)  # input name: (node key, output index)


def n(key, type_, title=None, widgets=(), **links):
    return Node(key, type_, title, list(widgets), links)


PROMPT = "a photo of an animal"
IMAGES = [n("structure image", "LoadImage", "Structure image", ["cross_image_structure.png", "image"]),
          n("appearance image", "LoadImage", "Appearance image", ["cross_image_appearance.png", "image"])]


def encodes(vae):
    return [n("encode structure", "VAEEncode", pixels=("structure image", 0), vae=vae),
            n("encode appearance", "VAEEncode", pixels=("appearance image", 0), vae=vae)]


def decoding(save_prefix, vae, masks=None):
    masks = masks or {}
    return ("Decode and colour", [
        n("decode", "VAEDecode", samples=("sampler", 0), vae=vae),
        n("adain", "CrossImageAdaINImage", "AdaIN (Image) of the object only" if masks else None,
          image=("decode", 0), reference=("appearance image", 0), **masks),
        n("save", "SaveImage", None, [save_prefix], images=("adain", 0))])


def unet_inputs(checkpoint, negative=False):
    nodes = [n("checkpoint", "CheckpointLoaderSimple", None, [checkpoint]), *IMAGES,
             n("prompt", "CLIPTextEncode", "Prompt (same for both images)", [PROMPT], clip=("checkpoint", 1))]
    if negative:
        nodes.append(n("negative", "CLIPTextEncode", "Negative (empty, for the inversions' CFG)", [""],
                       clip=("checkpoint", 1)))
    return ("Inputs", nodes)


def basic():
    return [
        unet_inputs("v1-5-pruned-emaonly.safetensors"),
        ("Inversion", encodes(("checkpoint", 2)) + [
            n("invert structure", "CrossImageInvertDDIM", "Invert structure", [50, "ddim_uniform", 1.0],
              model=("checkpoint", 0), latent=("encode structure", 0), positive=("prompt", 0)),
            n("invert appearance", "CrossImageInvertDDIM", "Invert appearance", [50, "ddim_uniform", 1.0],
              model=("checkpoint", 0), latent=("encode appearance", 0), positive=("prompt", 0))]),
        ("Attention settings", [n("attention", "CrossImageAttention", None, ["0,1", 0.15, 1.0, 5, 0.59],
                                  model=("checkpoint", 0), appearance=("invert appearance", 0))]),
        ("Sampling", [n("sampler", "CrossImageSampler", None, ["euler", 1.0], model=("attention", 0),
                        positive=("prompt", 0), structure=("invert structure", 0))]),
        decoding("cross_image_attention", ("checkpoint", 2)),
    ]


def paper(checkpoint, levels, save_prefix, object_only=False):
    """The paper's settings: edit-friendly DDPM inversion of both images, contrast, structure
    injection, appearance guidance, latent AdaIN within Self-Segmentation's masks."""
    segment = [n(f"segment {image}", "CrossImageSelfSegmentation", f"Segment {image}",
                 [PROMPT, "animal", 0.29, 5, 1.4], model=("checkpoint", 0), clip=("checkpoint", 1),
                 inversion=("invert", index)) for index, image in enumerate(("structure", "appearance"))]
    masks = {"structure_mask": ("segment structure", 0), "appearance_mask": ("segment appearance", 0)}
    attention_masks = masks if object_only else {}
    return [
        unet_inputs(checkpoint, negative=True),
        ("Inversion", encodes(("checkpoint", 2)) + [
            n("invert", "CrossImageInvertPairDDPM", "Invert both images (edit-friendly DDPM)",
              [100, "ddim_uniform", 3.5, 32, 0], model=("checkpoint", 0), structure=("encode structure", 0),
              appearance=("encode appearance", 0), positive=("prompt", 0), negative=("negative", 0))] + segment),
        ("Attention settings", [
            n("contrast", "CrossImageAttentionContrast", None, [1.67]),
            n("attention", "CrossImageAttention", "Cross-Image Attention (object only)" if object_only else None,
              [levels, 0.15, 1.0, 5, 0.59], model=("checkpoint", 0), appearance=("invert", 1),
              contrast=("contrast", 0), **attention_masks),
            n("guidance", "CrossImageAppearanceGuidance", None, [3.5, 1.75, 0.15]),
            n("latent adain", "CrossImageLatentAdaIN", "Latent AdaIN (follows the masks)" if object_only else None,
              [0.29, 1.0], **({} if object_only else masks))]),
        ("Sampling", [n("sampler", "CrossImageSampler", None, ["ddpm", 1.0], model=("attention", 0),
                        positive=("prompt", 0), structure=("invert", 0), guidance=("guidance", 0),
                        latent_adain=("latent adain", 0))]),
        decoding(save_prefix, ("checkpoint", 2),
                 {"image_mask": ("segment structure", 0), "reference_mask": ("segment appearance", 0)}
                 if object_only else None),
    ]


def attention_settings(model):
    """The method's settings on a diffusion transformer: contrast, attenuated positions (RoPE
    models), the family's `auto` blocks, appearance guidance and latent AdaIN."""
    positions = [n("positions", "CrossImageAppearancePositions", None, ["attenuated", 0.0, 1.0])] if model.rope else []
    return ("Attention settings", [
        n("contrast", "CrossImageAttentionContrast", None, [1.67]), *positions,
        n("attention", "CrossImageAttention", None, ["auto", 0.15, 1.0, 5, 0.59], model=model.source,
          appearance=("invert", 1), contrast=("contrast", 0), **({"positions": ("positions", 0)} if positions else {})),
        n("guidance", "CrossImageAppearanceGuidance", None, [3.5, 1.75, 0.15]),
        n("latent adain", "CrossImageLatentAdaIN", None, [0.29, 1.0])])


@dataclass
class Transformer:
    """How a diffusion transformer's users wire it: its loaders (the MODEL, CLIP and VAE outputs
    by node key), the prompt's conditioning (after FluxGuidance on Flux), the sampling's steps,
    scheduler and CFG (with an empty negative prompt where CFG is above 1)."""
    loaders: list
    source: tuple          # the MODEL the method patches
    clip: tuple
    vae: tuple
    steps: int
    scheduler: str
    cfg: float
    skip: int
    rope: bool = True
    guidance: float = None  # Flux's embedded guidance (FluxGuidance)


def transformer(family: Transformer, save_prefix: str, title: str):
    positive = ("flux guidance", 0) if family.guidance is not None else ("prompt", 0)
    prompts = [n("prompt", "CLIPTextEncode", "Prompt (same for both images)", [PROMPT], clip=family.clip)]
    if family.guidance is not None:
        prompts.append(n("flux guidance", "FluxGuidance", None, [family.guidance], conditioning=("prompt", 0)))
    negative = {}
    if family.cfg > 1:
        prompts.append(n("negative", "CLIPTextEncode", "Negative (empty, for CFG)", [""], clip=family.clip))
        negative = {"negative": ("negative", 0)}
    return [
        ("Inputs", family.loaders + IMAGES + prompts),
        ("Inversion", encodes(family.vae) + [
            n("invert", "CrossImageInvertPairDDPM", title, [family.steps, family.scheduler, family.cfg, family.skip, 0],
              model=family.source, structure=("encode structure", 0), appearance=("encode appearance", 0),
              positive=positive, **negative)]),
        attention_settings(family),
        ("Sampling", [n("sampler", "CrossImageSampler", None, ["euler_ancestral", family.cfg], model=("attention", 0),
                        positive=positive, structure=("invert", 0), guidance=("guidance", 0),
                        latent_adain=("latent adain", 0), **negative)]),
        decoding(save_prefix, family.vae),
    ]


FLUX = Transformer(  # Flux-dev: UNETLoader, DualCLIPLoader, VAELoader, FluxGuidance 3.5; Stable Flow's vital blocks
    [n("unet", "UNETLoader", None, ["flux1-dev.safetensors", "default"]),
     n("text encoders", "DualCLIPLoader", None, ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"]),
     n("vae", "VAELoader", None, ["ae.safetensors"])],
    ("unet", 0), ("text encoders", 0), ("vae", 0), 28, "simple", 1.0, 6, guidance=3.5)
SD35 = Transformer(  # SD3.5 large's single file (model and VAE), its three text encoders, shift 3, CFG 4.5
    [n("checkpoint", "CheckpointLoaderSimple", None, ["sd3.5_large.safetensors"]),
     n("text encoders", "TripleCLIPLoader", None, ["clip_l.safetensors", "clip_g.safetensors",
                                                   "t5xxl_fp16.safetensors"]),
     n("model sampling", "ModelSamplingSD3", None, [3.0], model=("checkpoint", 0))],
    ("model sampling", 0), ("text encoders", 0), ("checkpoint", 2), 28, "sgm_uniform", 4.5, 6, rope=False)
ZIMAGE = Transformer(  # Z-Image-Turbo: Qwen3 text encoder (lumina2 type), Flux's autoencoder, shift 3, 8 steps, CFG 1
    [n("unet", "UNETLoader", None, ["z_image_turbo_bf16.safetensors", "default"]),
     n("text encoder", "CLIPLoader", None, ["qwen_3_4b.safetensors", "lumina2", "default"]),
     n("vae", "VAELoader", None, ["ae.safetensors"]),
     n("model sampling", "ModelSamplingAuraFlow", None, [3.0], model=("unet", 0))],
    ("model sampling", 0), ("text encoder", 0), ("vae", 0), 8, "simple", 1.0, 2)
QWEN = Transformer(  # Qwen-Image: Qwen2.5-VL text encoder, its own autoencoder, shift 3.1, CFG 2.5
    [n("unet", "UNETLoader", None, ["qwen_image_fp8_e4m3fn.safetensors", "default"]),
     n("text encoder", "CLIPLoader", None, ["qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", "default"]),
     n("vae", "VAELoader", None, ["qwen_image_vae.safetensors"]),
     n("model sampling", "ModelSamplingAuraFlow", None, [3.1], model=("unet", 0))],
    ("model sampling", 0), ("text encoder", 0), ("vae", 0), 20, "simple", 2.5, 4)
INVERT_TITLE = "Invert both images (edit-friendly, flow)"


WORKFLOWS = {
    "cross_image_attention_basic": basic,
    "cross_image_attention_full": lambda: paper("v1-5-pruned-emaonly.safetensors", "0,1", "cross_image_attention_full"),
    "cross_image_attention_sdxl": lambda: paper("sd_xl_base_1.0.safetensors", "auto", "cross_image_attention_sdxl"),
    "cross_image_attention_object": lambda: paper("v1-5-pruned-emaonly.safetensors", "0,1",
                                                  "cross_image_attention_object", object_only=True),
    "cross_image_attention_flux": lambda: transformer(FLUX, "cross_image_attention_flux", INVERT_TITLE),
    "cross_image_attention_sd35": lambda: transformer(SD35, "cross_image_attention_sd35", INVERT_TITLE),
    "cross_image_attention_zimage": lambda: transformer(ZIMAGE, "cross_image_attention_zimage", INVERT_TITLE),
    "cross_image_attention_qwen": lambda: transformer(QWEN, "cross_image_attention_qwen", INVERT_TITLE),
}


def sockets_and_outputs(nodes_module, node_type):
    """(the socket inputs [(name, type)] in order, the outputs [(name, type)]) of a node type."""
    definition = headless.node_definition(nodes_module.NODE_CLASS_MAPPINGS[node_type])
    sockets = []
    for section in ("required", "optional"):
        for name in definition["input_order"].get(section, []):
            spec = definition["input"][section][name]
            if not headless.is_widget(spec):
                sockets.append((name, spec[0]))
    info = nodes_module.NODE_CLASS_MAPPINGS[node_type]
    if hasattr(info, "GET_NODE_INFO_V1"):
        v1 = info.GET_NODE_INFO_V1()
        outputs = list(zip(v1["output_name"], v1["output"]))
    else:
        outputs = list(zip(getattr(info, "RETURN_NAMES", None) or info.RETURN_TYPES, info.RETURN_TYPES))
    return sockets, outputs


def height(sockets, outputs, widgets, node_type) -> int:
    rows = max(len(sockets), len(outputs))
    return TITLE + 22 * rows + 28 * len(widgets) + (70 if node_type in ("CLIPTextEncode", "LoadImage") else 0) + 16


def build(nodes_module, groups) -> dict:
    """The workflow JSON (LiteGraph 0.4, as the editor saves it) of `groups`."""
    keys = [node.key for _, members in groups for node in members]
    ids = {key: i + 1 for i, key in enumerate(keys)}
    specs = {node.key: node for _, members in groups for node in members}
    shapes = {key: sockets_and_outputs(nodes_module, specs[key].type) for key in keys}
    links, json_nodes, json_groups = [], {}, []
    for column, (title, members) in enumerate(groups):
        x, y = column * COLUMN_WIDTH, 0
        top = y
        for node in members:
            sockets, outputs = shapes[node.key]
            h = height(sockets, outputs, node.widgets, node.type)
            json_nodes[node.key] = {
                "id": ids[node.key], "type": node.type, "pos": [x + (COLUMN_WIDTH - NODE_WIDTH) // 2, y],
                "size": [NODE_WIDTH, h], "flags": {}, "order": 0, "mode": 0,
                "inputs": [{"name": name, "type": kind, "link": None} for name, kind in sockets],
                "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                            for i, (name, kind) in enumerate(outputs)],
                "properties": {"Node name for S&R": node.type}, "widgets_values": list(node.widgets)}
            if node.title:
                json_nodes[node.key]["title"] = node.title
            y += h + GAP
        json_groups.append({"title": title, "bounding": [x + 10, top - 70, COLUMN_WIDTH - 20, y - top + 60],
                            "color": COLOURS[title], "font_size": 24, "flags": {}})
    for node in specs.values():
        sockets, _ = shapes[node.key]
        names = [name for name, _ in sockets]
        for name, (source, slot) in node.links.items():
            link_id = len(links) + 1
            kind = shapes[source][1][slot][1]
            links.append([link_id, ids[source], slot, ids[node.key], names.index(name), kind])
            json_nodes[node.key]["inputs"][names.index(name)]["link"] = link_id
            json_nodes[source]["outputs"][slot]["links"].append(link_id)
    for key, node in json_nodes.items():
        node["order"] = ids[key] - 1
    return {"last_node_id": len(keys), "last_link_id": len(links), "nodes": list(json_nodes.values()),
            "links": links, "groups": json_groups, "config": {}, "extra": {"ds": {"scale": 0.5, "offset": [40, 120]}},
            "version": 0.4}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(headless.REPO, "workflows"))
    args = parser.parse_args(argv)
    nodes_module = headless.start_comfyui(os.environ["COMFYUI_PATH"])
    for name, groups in WORKFLOWS.items():
        path = os.path.join(args.out, f"{name}.json")
        with open(path, "w") as f:
            json.dump(build(nodes_module, groups()), f, indent=1)
            f.write("\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
