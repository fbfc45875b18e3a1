"""Other Stable Diffusion UNet families through the real engine: random-weight checkpoints that
ComfyUI's CheckpointLoaderSimple detects as SD2.x v-prediction and as the SDXL family
(scripts/make_test_checkpoint.py --family sd2v / sdxl: their widths, text encoders and
conditioning; SDXL's layout has no attention at the finest level) run the shipped SD1.5
workflows, unchanged but for the checkpoint and step counts (the shipped SDXL workflow runs
on its own in test_workflow.py and test_browser.py)."""
import json
import os

import pytest
import torch
from PIL import Image

import headless
from shipped import IMAGE_SIZE, WORKFLOWS

FAMILIES = ("sd2v", "sdxl")
def loads_a_unet_checkpoint(path) -> bool:
    return any(node["type"] == "CheckpointLoaderSimple" and not node["widgets_values"][0].lower().startswith("sd3")
               for node in json.load(open(path))["nodes"])


# the SD1.5 workflows (the SDXL one runs anyway; the diffusion transformers' load no UNet)
SD15_WORKFLOWS = [path for path in WORKFLOWS if loads_a_unet_checkpoint(path) and "sdxl" not in os.path.basename(path)]


@pytest.fixture(scope="module", params=FAMILIES)
def family_checkpoint(request, comfy_nodes, comfy_dirs):
    """(family, file name in the checkpoints folder): SDXL's is the shipped SDXL workflow's;
    the SD2 one is built for this module (1 GB) and removed after it."""
    if request.param == "sdxl":
        yield "sdxl", sorted(request.getfixturevalue("sdxl_checkpoint"))[0]
        return
    import make_test_checkpoint
    name = f"random-{request.param}.safetensors"
    make_test_checkpoint.build_checkpoint(str(comfy_dirs["checkpoints"] / name), family=request.param)
    yield request.param, name
    os.remove(comfy_dirs["checkpoints"] / name)


def test_the_checkpoint_is_detected_as_its_family(family_checkpoint, comfy_dirs):
    import comfy.model_base
    import comfy.sd
    family, name = family_checkpoint
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(comfy_dirs["checkpoints"] / name),
                                                              output_vae=False, output_clip=True)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of an animal"))
    if family == "sdxl":
        assert isinstance(model.model, comfy.model_base.SDXL)
        assert cond[0][0].shape[-1] == 2048 and cond[0][1]["pooled_output"].shape[-1] == 1280
    else:
        assert type(model.model.model_config).__name__ == "SD20"
        assert model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
        assert cond[0][0].shape[-1] == 1024


@pytest.mark.parametrize("path", SD15_WORKFLOWS, ids=os.path.basename)
def test_shipped_workflows_run_on_the_family(comfy_nodes, comfy_dirs, family_checkpoint, example_inputs,
                                             monkeypatch, path):
    """The whole pipeline runs; on SDXL every model call, inversions and the cross-image
    sampling alike, gets SDXL's vector conditioning (pooled text and size embeddings, `y`) for
    each of its batch rows."""
    import comfy.model_base
    family, name = family_checkpoint
    prompt = headless.workflow_to_prompt(json.load(open(path)), headless.node_definitions(comfy_nodes))
    for node in prompt.values():  # the mechanics, not the picture: keep the CPU run short
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = name
        elif node["class_type"] == "CrossImageInvertDDIM":
            inputs["steps"] = 10
        elif node["class_type"] in ("CrossImageInvertDDPM", "CrossImageInvertPairDDPM"):
            inputs.update(steps=20, skip=6)
    calls = []
    apply_model = comfy.model_base.BaseModel.apply_model

    def recorded(self, x, *args, **kwargs):
        y = kwargs.get("y")  # ComfyUI passes the conditioning as keyword arguments
        calls.append((x.shape[0], None if y is None else y.shape[0]))
        return apply_model(self, x, *args, **kwargs)
    monkeypatch.setattr(comfy.model_base.BaseModel, "apply_model", recorded)

    outputs = headless.Engine().run(prompt)
    images = [image for out in outputs.values() for image in out.get("images", [])]
    assert len(images) == 1
    assert Image.open(comfy_dirs["output"] / images[0]["subfolder"] / images[0]["filename"]).size == IMAGE_SIZE
    assert max(rows for rows, _ in calls) >= 3  # the cross-image batch: output, appearance, structure
    if family == "sdxl":
        assert all(rows == y_rows for rows, y_rows in calls), calls[:5]


def test_sdxl_appearance_of_another_size(comfy_nodes, comfy_dirs, sdxl_checkpoint, example_inputs, monkeypatch):
    """The shipped SDXL workflow with an appearance image of another size and shape than the
    structure: the output has the structure's size, and every model call on the appearance
    (its inversion and its rows while sampling, in calls of their own) gets the size
    embeddings of the appearance's own size, as plain CLIP Text Encode makes them."""
    import comfy.model_base
    appearance_size = (64, 160)  # width, height: latent 8 x 20 against the structure's 16 x 12
    Image.open(comfy_dirs["input"] / "cross_image_appearance.png").resize(appearance_size).save(
        comfy_dirs["input"] / "tall_appearance.png")
    path = next(path for path in WORKFLOWS if "sdxl" in os.path.basename(path))
    prompt = headless.workflow_to_prompt(json.load(open(path)), headless.node_definitions(comfy_nodes))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage" and inputs["image"] == "cross_image_appearance.png":
            inputs["image"] = "tall_appearance.png"
        elif node["class_type"] in ("CrossImageInvertDDPM", "CrossImageInvertPairDDPM"):
            inputs.update(steps=8, skip=2)  # 6 sampled steps: swaps from the second (0.15 of them)
    calls = []
    apply_model = comfy.model_base.BaseModel.apply_model

    def recorded(self, x, *args, **kwargs):
        calls.append((tuple(x.shape[-2:]), x.shape[0], kwargs["y"][:, -6 * 256:].clone()))
        return apply_model(self, x, *args, **kwargs)
    monkeypatch.setattr(comfy.model_base.BaseModel, "apply_model", recorded)

    outputs = headless.Engine().run(prompt)
    images = [image for out in outputs.values() for image in out.get("images", [])]
    assert Image.open(comfy_dirs["output"] / images[0]["subfolder"] / images[0]["filename"]).size == IMAGE_SIZE
    structure_latent = (IMAGE_SIZE[1] // 8, IMAGE_SIZE[0] // 8)
    appearance_latent = (appearance_size[1] // 8, appearance_size[0] // 8)
    assert {shape for shape, _, _ in calls} == {structure_latent, appearance_latent}
    sizes = {}
    for shape, rows, size_embedding in calls:
        assert torch.equal(size_embedding, size_embedding[:1].expand(rows, -1))  # one size for all rows
        assert torch.equal(sizes.setdefault(shape, size_embedding[0]), size_embedding[0])  # the same for the shape
    assert not torch.equal(sizes[structure_latent], sizes[appearance_latent])
    # while sampling: the appearance alone, the output rows (and structure, plain rows) in calls of their own
    assert max(rows for shape, rows, _ in calls if shape == structure_latent) >= 2
