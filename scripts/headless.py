"""Run a UI-format ComfyUI workflow through ComfyUI's real execution engine, in-process.

Used by the transfer command and by the tests. The workflow (the JSON the editor saves and
users share) is converted to an API prompt with the node definitions ComfyUI itself reports
(the same fields as its /object_info), validated with ComfyUI's validate_prompt and run by
its PromptExecutor, caches and all.
"""
import asyncio
import os
import sys
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# ComfyUI's own extra nodes the shipped workflows use (FluxGuidance), loaded from its comfy_extras
EXTRA_NODES = ("nodes_flux.py", "nodes_sd3.py", "nodes_model_advanced.py")  # the shipped workflows' loaders


def use_comfyui(comfy_path) -> str:
    """Make the ComfyUI at `comfy_path` importable (as its own main.py runs from its folder)."""
    comfy_path = os.path.abspath(comfy_path)
    if not os.path.isfile(os.path.join(comfy_path, "comfy", "sd.py")):
        raise SystemExit(f"no ComfyUI at {comfy_path} (set COMFYUI_PATH)")
    if comfy_path not in sys.path:
        sys.path.insert(0, comfy_path)
    return comfy_path


def start_comfyui(comfy_path, input_dir=None, output_dir=None, checkpoint_dirs=(), dynamic_vram=False):
    """Import ComfyUI from `comfy_path`, point its folders, and load this pack's nodes.

    dynamic_vram: turn on the DynamicVRAM model loading (comfy-aimdo) as ComfyUI 0.33.0's main.py
    does on an NVIDIA card. Returns the `nodes` module (ComfyUI's node registry)."""
    comfy_path = use_comfyui(comfy_path)
    import torch
    from comfy.cli_args import args
    if not torch.cuda.is_available():
        if dynamic_vram:
            raise SystemExit("DynamicVRAM needs an NVIDIA GPU; this machine has none")
        args.cpu = True  # what `python main.py --cpu` does; must precede comfy.model_management
    if dynamic_vram:
        _enable_dynamic_vram()
    import folder_paths
    import nodes

    if input_dir:
        folder_paths.set_input_directory(input_dir)
    if output_dir:
        folder_paths.set_output_directory(output_dir)
    for directory in checkpoint_dirs:
        folder_paths.add_model_folder_path("checkpoints", directory)
    if "CrossImageSampler" not in nodes.NODE_CLASS_MAPPINGS:
        for extra in EXTRA_NODES:
            extra_path = os.path.join(comfy_path, "comfy_extras", extra)
            asyncio.run(nodes.load_custom_node(extra_path, module_parent="comfy_extras"))
        if not asyncio.run(nodes.load_custom_node(REPO)):
            raise RuntimeError("the Cross-Image Attention nodes failed to load (see the log above)")
    return nodes


def _enable_dynamic_vram():
    """What ComfyUI 0.33.0's main.py does for DynamicVRAM: comfy-aimdo set up before
    comfy.model_management first touches the card, then the dynamic ModelPatcher in place."""
    try:
        import comfy_aimdo.control
    except ImportError as error:
        raise SystemExit(f"DynamicVRAM needs ComfyUI 0.33.0 or later and comfy-aimdo ({error})") from error
    comfy_aimdo.control.init()
    import comfy.memory_management
    import comfy.model_management
    import comfy.model_patcher
    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        raise SystemExit("DynamicVRAM needs ComfyUI 0.33.0 or later: this ComfyUI has no ModelPatcherDynamic")
    if not comfy_aimdo.control.init_devices(d.index for d in comfy.model_management.get_all_torch_devices()):
        raise SystemExit("comfy-aimdo did not start on this card: DynamicVRAM is not available")
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True


def pack_module():
    """This pack as ComfyUI imported it (custom nodes are imported under a name made from their
    folder's path): the loaded module whose file is the pack's __init__.py."""
    init = os.path.join(REPO, "__init__.py")
    for module in list(sys.modules.values()):
        if os.path.abspath(getattr(module, "__file__", None) or "") == init:
            return module
    raise RuntimeError("the Cross-Image Attention pack is not loaded: call start_comfyui first")


def node_definition(node_class) -> dict:
    """The input part of what ComfyUI's /object_info reports for a node class."""
    if hasattr(node_class, "GET_NODE_INFO_V1"):  # nodes written with ComfyUI's newer schema API
        info = node_class.GET_NODE_INFO_V1()
        return {"input": info["input"], "input_order": info["input_order"]}
    inputs = node_class.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v.keys()) for k, v in inputs.items()}}


def node_definitions(nodes) -> dict:
    return {name: node_definition(cls) for name, cls in nodes.NODE_CLASS_MAPPINGS.items()}


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name, spec) -> bool:
    """Whether the editor adds a 'control after generate' value after this widget: as the input's
    control_after_generate option says (a mode or true: yes; false: no), else for INT inputs named
    seed or noise_seed."""
    options = spec[1] if len(spec) > 1 else {}
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def combo_choices(spec):
    """The choices of a combo input: a V1 list, or the options of a V3 "COMBO"; else None."""
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options") if spec[0] == "COMBO" and len(spec) > 1 else None


def _widget_default(spec):
    """The value the editor gives a widget the workflow has no value for (a newer input)."""
    options = spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    choices = combo_choices(spec)
    return choices[0] if choices else None


def workflow_to_prompt(workflow: dict, definitions: dict) -> dict:
    """Convert a UI workflow (nodes, links, widgets_values) to an API prompt."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted or bypassed in the editor
            continue
        definition = definitions.get(node["type"])
        if definition is None:
            raise ValueError(f"workflow node {node['id']}: unknown node type {node['type']!r}")
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for section in ("required", "optional"):
            specs = definition["input"].get(section, {})
            for name in definition["input_order"].get(section, []):
                spec = specs[name]
                if is_widget(spec):
                    value = values.pop(0) if values else _widget_default(spec)
                    if _has_control_widget(name, spec) and values:
                        values.pop(0)
                    if name not in linked and value is not None:
                        inputs[name] = value
                if name in linked:
                    link = linked[name]
                    inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


class _QuietServer:
    """The little of ComfyUI's PromptServer the executor talks to; keeps its messages."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class Engine:
    """One ComfyUI executor (with its caches) that runs prompts one after another."""

    def __init__(self):
        import execution
        self._execution = execution
        self.server = _QuietServer()
        # ComfyUI's classic cache; 0.33.0's executor also reads "ram_inactive" (0.3.75 ignores it)
        self.executor = execution.PromptExecutor(self.server, cache_type=False,
                                                 cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})

    def run(self, prompt: dict) -> dict:
        """Validate and execute; returns the UI outputs per node (e.g. saved images)."""
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(
            self._execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise RuntimeError(f"ComfyUI rejected the prompt: {error} {node_errors}")
        self.executor.execute(prompt, prompt_id, {}, outputs)
        if not self.executor.success:
            errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
            raise RuntimeError(f"ComfyUI failed to run the prompt: {errors}")
        return self.executor.history_result["outputs"]

    def cached_outputs(self, node_id: str):
        """The outputs the executor's cache holds for a node of the last prompt (the cache's
        get() is a plain method in 0.3.75 and a coroutine in 0.33.0)."""
        entry = self.executor.caches.outputs.get(node_id)
        if asyncio.iscoroutine(entry):
            entry = asyncio.run(entry)
        return entry.outputs
