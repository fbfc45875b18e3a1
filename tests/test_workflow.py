"""The shipped workflows, run through ComfyUI's real execution engine with a generated
random-weight SD1.5 checkpoint."""
import json
import os

import pytest
import torch
from PIL import Image

import headless

from shipped import IMAGE_SIZE, WORKFLOWS, with_retired_inputs


def test_workflows_are_shipped():
    assert any(path.endswith("cross_image_attention_basic.json") for path in WORKFLOWS)
    assert any("sdxl" in os.path.basename(path) for path in WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_links_match_node_definitions(comfy_nodes, path):
    """Every node type exists and every link joins an output to an input of the same type."""
    workflow = json.load(open(path))
    definitions = headless.node_definitions(comfy_nodes)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for node in nodes.values():
        assert node["type"] in definitions, f"missing node type {node['type']}"
    for link_id, source, slot, target, target_slot, kind in workflow["links"]:
        output_types = comfy_nodes.NODE_CLASS_MAPPINGS[nodes[source]["type"]].RETURN_TYPES
        assert output_types[slot] == kind
        name = nodes[target]["inputs"][target_slot]["name"]
        spec = {**definitions[nodes[target]["type"]]["input"].get("required", {}),
                **definitions[nodes[target]["type"]]["input"].get("optional", {})}[name]
        assert spec[0] == kind, f"link {link_id}: {kind} into {nodes[target]['type']}.{name} ({spec[0]})"


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_shipped_workflow_runs_in_comfyui(comfy_nodes, comfy_dirs, workflow_checkpoints, example_inputs, path):
    prompt = headless.workflow_to_prompt(json.load(open(path)), headless.node_definitions(comfy_nodes))
    engine = headless.Engine()
    outputs = engine.run(prompt)
    images = [image for out in outputs.values() for image in out.get("images", [])]
    assert len(images) == 1
    saved = comfy_dirs["output"] / images[0]["subfolder"] / images[0]["filename"]
    assert Image.open(saved).size == IMAGE_SIZE

    # The MODEL the loader produced is still unpatched after the graph ran.
    model = loader_model(engine, prompt)
    options = model.model_options["transformer_options"]
    assert not {"patches_replace", "cross_image_settings", "optimized_attention_override"} & set(options)
    assert model.patches == {}


def loader_model(engine, prompt):
    """The MODEL the workflow's model loader gave."""
    loader = next(k for k, v in prompt.items() if v["class_type"] in ("CheckpointLoaderSimple", "UNETLoader"))
    return engine.cached_outputs(loader)[0][0]


def saved_pixels(comfy_dirs, outputs):
    image = next(image for out in outputs.values() for image in out.get("images", []))
    import numpy as np
    return np.asarray(Image.open(comfy_dirs["output"] / image["subfolder"] / image["filename"]))


def test_interrupt_stops_within_a_step_and_the_next_run_is_clean(comfy_nodes, comfy_dirs, sd15_checkpoint,
                                                                 example_inputs):
    import comfy.utils
    import nodes as comfy_node_registry
    prompt = headless.workflow_to_prompt(json.load(open(WORKFLOWS[0])), headless.node_definitions(comfy_nodes))
    for node in prompt.values():
        if node["class_type"] == "CrossImageInvertDDIM":
            node["inputs"]["steps"] = 6  # the mechanics, not the picture: keep the runs short
    engine = headless.Engine()
    seen = []

    def interrupt_at_step_2(value, total, preview, node_id=None):
        seen.append(value)
        if value >= 2 and [v for v in seen if v >= 2] == [value]:  # once, at the first update from step 2
            comfy_node_registry.interrupt_processing(True)

    comfy.utils.set_progress_bar_global_hook(interrupt_at_step_2)
    try:
        with pytest.raises(RuntimeError, match="failed"):
            engine.run(prompt)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    # stopped within the step it was interrupted in: no update after the one that interrupted
    # (0.33.0's ProgressBar may drop updates closer than 100 ms apart, so that one is the first >= 2)
    assert seen[-1] >= 2 and [value for value in seen if value >= 2] == [seen[-1]]
    assert any(event == "execution_interrupted" for event, _ in engine.executor.status_messages)
    assert "patches_replace" not in loader_model(engine, prompt).model_options["transformer_options"]

    rerun = saved_pixels(comfy_dirs, engine.run(prompt))
    clean = saved_pixels(comfy_dirs, headless.Engine().run(prompt))
    assert (rerun == clean).all()


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflows_saved_with_retired_inputs_still_convert(comfy_nodes, path):
    """Workflows saved while the Invert nodes had `keep_keys_values` and Cross-Image Attention had
    `mode` (fast mode, retired) hold more widget values on those nodes, after all the others:
    converted as the editor does, the extra values are dropped and the prompt is the same (the
    browser test checks the editor agrees)."""
    workflow = json.load(open(path))
    definitions = headless.node_definitions(comfy_nodes)
    assert headless.workflow_to_prompt(with_retired_inputs(workflow), definitions) == \
        headless.workflow_to_prompt(workflow, definitions)


def test_object_workflow_swaps_only_inside_the_self_segmentation_masks(comfy_nodes, comfy_dirs, pack, sd15_checkpoint,
                                                                       example_inputs, monkeypatch):
    """The object-only workflow: Self-Segmentation's masks reach Cross-Image Attention, whose
    swapped layers blend by them (the structure mask's share, the appearance mask's keys), and
    the image AdaIN; latent AdaIN follows them."""
    path = next(path for path in WORKFLOWS if path.endswith("cross_image_attention_object.json"))
    prompt = headless.workflow_to_prompt(json.load(open(path)), headless.node_definitions(comfy_nodes))
    for node in prompt.values():
        if node["class_type"] == "CrossImageInvertPairDDPM":
            node["inputs"].update(steps=20, skip=6)  # the mechanics, not the picture: keep the CPU run short
    patch = pack.nodes.sampling.patch
    seen = []

    def regional(q, k, v, sources, shares, *args):
        seen.append(shares)
        return regional_attention(q, k, v, sources, shares, *args)
    regional_attention = patch.regional_attention
    monkeypatch.setattr(patch, "regional_attention", regional)
    engine = headless.Engine()
    engine.run(prompt)
    attention = next(key for key, node in prompt.items() if node["class_type"] == "CrossImageAttention")
    structure_mask, appearance_mask = (engine.cached_outputs(prompt[attention]["inputs"][name][0])[0][0]
                                       for name in ("structure_mask", "appearance_mask"))
    sources = {prompt[prompt[attention]["inputs"][name][0]]["class_type"] for name in ("structure_mask",
                                                                                       "appearance_mask")}
    assert sources == {"CrossImageSelfSegmentation"}
    assert seen and all(len(shares[0]) == 1 for shares in seen)  # one region: the appearance, by the masks
    finest = max(seen, key=lambda shares: shares[0].shape[1])
    latent = torch.nn.functional.interpolate(structure_mask[None], size=(IMAGE_SIZE[1] // 8, IMAGE_SIZE[0] // 8),
                                             mode="bilinear", align_corners=False)
    torch.testing.assert_close(finest[0][0, :, 0], latent.flatten())  # the output's share: the structure mask
    assert finest[1] is not None and finest[2][0] is not None  # own attention outside, keys inside the appearance's
    assert 0 < len(finest[2][0]) < (IMAGE_SIZE[1] // 8) * (IMAGE_SIZE[0] // 8)
    assert appearance_mask.shape[-2:] == (IMAGE_SIZE[1], IMAGE_SIZE[0])
