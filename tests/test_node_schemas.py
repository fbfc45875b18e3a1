"""Every node of the pack as ComfyUI sees it: loadable, documented, and with stable names.

Renaming a node or an input breaks users' saved workflows, so the names are pinned in
tests/stable_names.json: change that file only together with a way to load old workflows."""
import json
import os

import pytest

import headless

STABLE_NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stable_names.json")
CORE_TYPES = {"MODEL", "CLIP", "VAE", "LATENT", "CONDITIONING", "IMAGE", "MASK", "INT", "FLOAT", "STRING", "BOOLEAN"}


@pytest.fixture(scope="module")
def ours(comfy_nodes, pack):
    return {name: comfy_nodes.NODE_CLASS_MAPPINGS[name] for name in pack.NODE_CLASS_MAPPINGS}


def inputs_of(node_class):
    spec = node_class.INPUT_TYPES()
    return {section: spec.get(section, {}) for section in ("required", "optional")}


def test_names_are_stable(ours):
    current = {name: {section: list(specs) for section, specs in inputs_of(cls).items() if specs}
               for name, cls in sorted(ours.items())}
    with open(STABLE_NAMES) as f:
        assert current == json.load(f)


def test_nodes_are_registered_with_display_names_and_category(comfy_nodes, ours):
    for name, cls in ours.items():
        assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name), name
        assert cls.CATEGORY == "cross_image_attention", name
        assert len(cls.DESCRIPTION) > 40, name
        assert callable(getattr(cls(), cls.FUNCTION)), name


def test_every_input_and_output_is_documented_and_typed(ours, pack):
    known = CORE_TYPES | {pack.nodes.inversion_type.INVERSION, pack.nodes.inversion_type.CONTRAST,
                           pack.nodes.inversion_type.GUIDANCE,
                           pack.nodes.inversion_type.LATENT_ADAIN}
    for name, cls in ours.items():
        for section, specs in inputs_of(cls).items():
            for input_name, spec in specs.items():
                assert isinstance(spec[0], list) or spec[0] in known, (name, input_name, spec[0])
                assert len(spec[1].get("tooltip", "")) > 15, f"{name}.{input_name} has no tooltip"
        assert all(kind in known for kind in cls.RETURN_TYPES), name
        if cls.RETURN_TYPES:
            assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES), name


def test_schemas_as_comfyui_reports_them(comfy_nodes, ours):
    """What /object_info would report, and that ComfyUI's validator accepts a default prompt
    for the widget-only node inputs (types, ranges, combo values)."""
    for name, cls in ours.items():
        info = headless.node_definition(cls)
        for section, order in info["input_order"].items():
            assert order == list(info["input"][section]), name
        for input_name, spec in info["input"]["required"].items():
            options = spec[1]
            if spec[0] in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], (name, input_name)
            if isinstance(spec[0], list) and spec[0] and "default" in options:
                assert options["default"] in spec[0], (name, input_name)
