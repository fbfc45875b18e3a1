"""Test session set-up: a real ComfyUI (COMFYUI_PATH, prepared by scripts/setup_env.sh) with
this pack loaded as a custom node, temporary input/output folders, and test models."""
import json
import os
import sys

import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(REPO, "scripts")]

import headless  # noqa: E402  (scripts/headless.py)
from shipped import EXAMPLE_IMAGES, IMAGE_SIZE, WORKFLOWS  # noqa: E402


def _comfy_path() -> str:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.exit("COMFYUI_PATH is not set: run the tests with `bash scripts/run_tests.sh`", returncode=2)
    return path


@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    dirs = {name: root / name for name in ("input", "output", "checkpoints")}
    for d in dirs.values():
        d.mkdir()
    return dirs


@pytest.fixture(scope="session")
def comfy_nodes(comfy_dirs):
    """ComfyUI's node registry with this pack loaded."""
    return headless.start_comfyui(_comfy_path(), input_dir=str(comfy_dirs["input"]),
                                  output_dir=str(comfy_dirs["output"]),
                                  checkpoint_dirs=[str(comfy_dirs["checkpoints"])])


@pytest.fixture(scope="session")
def pack(comfy_nodes):
    """This pack as ComfyUI imported it (gives access to pack.core and pack.nodes)."""
    return sys.modules[REPO.replace(".", "_x_")]


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


@pytest.fixture(scope="session")
def sd15_checkpoint(comfy_nodes, comfy_dirs):
    """A random-weight checkpoint ComfyUI detects as SD1.5, registered in its checkpoints
    folder list under the name the shipped workflows use."""
    import make_test_checkpoint
    names = {node["widgets_values"][0] for path in WORKFLOWS for node in json.load(open(path))["nodes"]
             if node["type"] == "CheckpointLoaderSimple"}
    first = comfy_dirs["checkpoints"] / sorted(names)[0]
    make_test_checkpoint.build_checkpoint(str(first))
    for name in names:
        if not (comfy_dirs["checkpoints"] / name).exists():
            os.link(first, comfy_dirs["checkpoints"] / name)
    return names


@pytest.fixture(scope="session")
def example_inputs(comfy_dirs):
    for path in EXAMPLE_IMAGES:
        Image.open(path).convert("RGB").resize(IMAGE_SIZE).save(comfy_dirs["input"] / os.path.basename(path))
