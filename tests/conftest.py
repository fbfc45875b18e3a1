"""Test session set-up: a real ComfyUI (COMFYUI_PATH, prepared by scripts/setup_env.sh) with
this pack loaded as a custom node, temporary input/output folders, and test models."""
import json
import os

import pytest
from PIL import Image

import headless  # scripts/headless.py (pytest.ini's pythonpath)
from shipped import EXAMPLE_IMAGES, IMAGE_SIZE, MODEL_FOLDERS, WORKFLOWS


def _comfy_path() -> str:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.exit("COMFYUI_PATH is not set: run the tests with `bash scripts/run_tests.sh`", returncode=2)
    return path


@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    dirs = {name: root / name for name in ("input", "output", "checkpoints", "diffusion_models", "text_encoders",
                                           "vae")}
    for d in dirs.values():
        d.mkdir()
    return dirs


@pytest.fixture(scope="session")
def comfy_nodes(comfy_dirs):
    """ComfyUI's node registry with this pack loaded."""
    nodes = headless.start_comfyui(_comfy_path(), input_dir=str(comfy_dirs["input"]),
                                   output_dir=str(comfy_dirs["output"]),
                                   checkpoint_dirs=[str(comfy_dirs["checkpoints"])])
    import folder_paths
    for name in MODEL_FOLDERS:
        folder_paths.add_model_folder_path(name, str(comfy_dirs[name]))
    return nodes


@pytest.fixture(scope="session")
def pack(comfy_nodes):
    """This pack as ComfyUI imported it (gives access to pack.core and pack.nodes)."""
    return headless.pack_module()


@pytest.fixture(scope="session")
def node(comfy_nodes):
    """node("CrossImageSampler") -> that registered node class (V3: node(...).execute(...))."""
    return lambda name: comfy_nodes.NODE_CLASS_MAPPINGS[name]


@pytest.fixture(scope="session")
def tiny_model(comfy_nodes):
    import tiny_models
    return tiny_models.tiny_model(seed=0)


@pytest.fixture(scope="session")
def cond(comfy_nodes):
    """A random prompt conditioning for the tiny models."""
    import tiny_models
    return tiny_models.conditioning(0)


def is_sd3_name(name: str) -> bool:
    return name.lower().startswith("sd3")


def shipped_checkpoint_names(family: str) -> set:
    """The UNet checkpoint names the shipped workflows use for `family` ("sdxl": names with "xl";
    SD3's are dit_files')."""
    names = {node["widgets_values"][0] for path in WORKFLOWS for node in json.load(open(path))["nodes"]
             if node["type"] == "CheckpointLoaderSimple" and not is_sd3_name(node["widgets_values"][0])}
    return {name for name in names if ("xl" in name.lower()) == (family == "sdxl")}


def build_shipped_checkpoints(comfy_dirs, family: str) -> set:
    """A random-weight checkpoint of `family`, registered in ComfyUI's checkpoints folder list
    under every name the shipped workflows use for that family."""
    import make_test_checkpoint
    names = shipped_checkpoint_names(family)
    first = comfy_dirs["checkpoints"] / sorted(names)[0]
    make_test_checkpoint.build_checkpoint(str(first), family=family)
    for name in names:
        if not (comfy_dirs["checkpoints"] / name).exists():
            os.link(first, comfy_dirs["checkpoints"] / name)
    return names


@pytest.fixture(scope="session")
def sd15_checkpoint(comfy_nodes, comfy_dirs):
    """The SD1.5 checkpoint names of the shipped workflows, one random SD1.5 checkpoint."""
    return build_shipped_checkpoints(comfy_dirs, "sd15")


@pytest.fixture(scope="session")
def sdxl_checkpoint(comfy_nodes, comfy_dirs):
    """The SDXL checkpoint names of the shipped workflows, one random SDXL-family checkpoint."""
    return build_shipped_checkpoints(comfy_dirs, "sdxl")


@pytest.fixture(scope="session")
def dit_files(comfy_nodes, comfy_dirs):
    """The files the shipped diffusion-transformer workflows load: tiny random models
    (UNETLoader; SD3.5's single-file checkpoint, CheckpointLoaderSimple), random autoencoders
    (VAELoader) and placeholder text encoders (the CLIP loaders), which the tests' stand-ins stand
    for (tests/stand_ins.py, installed here)."""
    import make_test_checkpoint
    import stand_ins
    stand_ins.install()
    writers = {}
    for path in WORKFLOWS:
        for node in json.load(open(path))["nodes"]:
            kind, values = node["type"], node["widgets_values"]
            if kind == "UNETLoader":
                family = stand_ins.DIFFUSION_MODELS[values[0]]
                writers[("diffusion_models", values[0])] = lambda p, family=family: stand_ins.write_diffusion_model(
                    p, family)
            elif kind == "CheckpointLoaderSimple" and is_sd3_name(values[0]):
                writers[("checkpoints", values[0])] = stand_ins.write_sd3_checkpoint
            elif kind in ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader"):
                count = {"CLIPLoader": 1, "DualCLIPLoader": 2, "TripleCLIPLoader": 3}[kind]
                writers.update(dict.fromkeys((("text_encoders", name) for name in values[:count]),
                                             stand_ins.write_text_encoder))
            elif kind == "VAELoader":
                writers[("vae", values[0])] = (stand_ins.write_wan_vae if "qwen" in values[0]
                                               else make_test_checkpoint.build_flux_vae)
    for (folder, name), write in writers.items():
        write(str(comfy_dirs[folder] / name))
    return {name for _, name in writers}


@pytest.fixture(scope="session")
def workflow_checkpoints(sd15_checkpoint, sdxl_checkpoint, dit_files):
    """Every model file the shipped workflows load, each of its family."""
    return sd15_checkpoint | sdxl_checkpoint | dit_files


@pytest.fixture(scope="session")
def example_inputs(comfy_dirs):
    for path in EXAMPLE_IMAGES:
        Image.open(path).convert("RGB").resize(IMAGE_SIZE).save(comfy_dirs["input"] / os.path.basename(path))
