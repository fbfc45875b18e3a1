"""Every node of the pack as ComfyUI sees it: V3 nodes, loadable, documented, with stable names.

Renaming a node or an input breaks users' saved workflows, so the names are pinned in
tests/stable_names.json: change that file only together with a way to load old workflows."""
import json
import os

import pytest

import headless

STABLE_NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stable_names.json")
CORE_TYPES = {"MODEL", "CLIP", "VAE", "LATENT", "CONDITIONING", "IMAGE", "MASK", "INT", "FLOAT", "STRING", "BOOLEAN",
              "COMBO"}
# Tuning inputs most users never touch: folded away in editors that know the V3 `advanced` flag.
ADVANCED_INPUTS = {
    "CrossImageInvertDDIM": {"scheduler"},
    "CrossImageInvertDDPM": {"scheduler", "skip", "seed"},
    "CrossImageInvertPairDDIM": {"scheduler"},
    "CrossImageInvertPairDDPM": {"scheduler", "skip", "seed"},
    "CrossImageAttention": {"start", "end", "structure_every", "structure_until"},
    "CrossImageAppearanceGuidance": {"end_scale", "start"},
    "CrossImageAppearancePositions": {"high_start", "high_end"},
    "CrossImageLatentAdaIN": {"end"},
    "CrossImageSelfSegmentation": {"step", "clusters", "ratio"},
}


@pytest.fixture(scope="module")
def ours(comfy_nodes, pack):
    """{node id: class} of the pack's nodes, as ComfyUI registered them."""
    return {cls.GET_SCHEMA().node_id: comfy_nodes.NODE_CLASS_MAPPINGS[cls.GET_SCHEMA().node_id]
            for cls in pack.nodes.NODES}


def info(cls):
    """What ComfyUI's /object_info reports for a node class."""
    return cls.GET_NODE_INFO_V1()


def inputs_of(cls):
    return {section: info(cls)["input"].get(section, {}) for section in ("required", "optional")}


def test_nodes_are_v3_and_registered_through_the_extension(ours, pack):
    from comfy_api.latest import io
    assert len(ours) == len(pack.nodes.NODES) == 15
    assert all(issubclass(cls, io.ComfyNode) for cls in ours.values())
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # ComfyUI would take the V1 path instead


def test_names_are_stable(ours):
    current = {name: {section: list(specs) for section, specs in inputs_of(cls).items() if specs}
               for name, cls in sorted(ours.items())}
    with open(STABLE_NAMES) as f:
        assert current == json.load(f)


def test_nodes_have_display_names_category_and_descriptions(comfy_nodes, ours):
    for name, cls in ours.items():
        node_info = info(cls)
        assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name) == node_info["display_name"], name
        assert node_info["category"] == "cross_image_attention", name
        assert len(node_info["description"]) > 40, name


def test_every_input_and_output_is_documented_and_typed(ours, pack):
    sockets = pack.nodes.sockets
    known = CORE_TYPES | {t.io_type for t in (sockets.InversionSocket, sockets.ContrastSocket, sockets.GuidanceSocket,
                                              sockets.LatentAdaINSocket, sockets.RegionsSocket,
                                              sockets.PositionsSocket)}
    for name, cls in ours.items():
        for section, specs in inputs_of(cls).items():
            for input_name, spec in specs.items():
                assert spec[0] in known, (name, input_name, spec[0])
                assert len(spec[1].get("tooltip", "")) > 15, f"{name}.{input_name} has no tooltip"
        node_info = info(cls)
        assert all(kind in known for kind in node_info["output"]), name
        assert all(len(tip or "") > 15 for tip in node_info["output_tooltips"]), name


def test_schemas_as_comfyui_reports_them(ours):
    """What /object_info reports: input order, and defaults inside ranges and choices."""
    for name, cls in ours.items():
        definition = headless.node_definition(cls)
        for section, order in definition["input_order"].items():
            assert order == list(definition["input"][section]), name
        for section in ("required", "optional"):
            for input_name, spec in definition["input"].get(section, {}).items():
                options = spec[1]
                if spec[0] in ("INT", "FLOAT") and "default" in options:
                    assert options["min"] <= options["default"] <= options["max"], (name, input_name)
                choices = headless.combo_choices(spec)
                if choices and "default" in options:
                    assert options["default"] in choices, (name, input_name)


def test_tuning_inputs_are_advanced_where_comfyui_knows_the_flag(ours, pack):
    """0.33.0's V3 inputs take advanced= (the editor folds those inputs away); 0.3.75's do not,
    and there the same inputs are ordinary ones."""
    import comfyui_version
    knows_flag = bool(pack.nodes.sockets.ADVANCED)
    if tuple(int(p) for p in comfyui_version.__version__.split(".")[:2]) >= (0, 33):
        assert knows_flag
    for name, cls in ours.items():
        flagged = {input_name for specs in inputs_of(cls).values() for input_name, spec in specs.items()
                   if spec[1].get("advanced")}
        assert flagged == (ADVANCED_INPUTS.get(name, set()) if knows_flag else set()), name


def test_the_readme_lists_every_node_and_the_docs_name_only_nodes_that_exist(ours):
    """README.md's node list has one line per registered node, by its display name and id; every
    node id the docs name (`CrossImage...` in backticks) is a registered node."""
    import glob
    import re
    from shipped import REPO
    readme = open(os.path.join(REPO, "README.md")).read()
    listed = re.findall(r"^- \*\*(.+?)\*\* \(`(\w+)`\): \S", readme, flags=re.M)
    assert sorted(node_id for _, node_id in listed) == sorted(ours)
    assert all(display == info(ours[node_id])["display_name"] for display, node_id in listed)
    for path in [os.path.join(REPO, "README.md")] + glob.glob(os.path.join(REPO, "docs", "*.md")):
        named = set(re.findall(r"`(CrossImage[A-Za-z]+)`", open(path).read()))
        assert named <= set(ours), (path, named - set(ours))
