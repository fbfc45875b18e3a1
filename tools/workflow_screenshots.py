"""Screenshots of the shipped workflows (workflows/*.json) as the ComfyUI editor draws them,
for the README: a ComfyUI server with this pack, its frontend in headless Chromium, each
workflow dropped on the canvas and fitted to the view, one PNG per workflow.

    COMFYUI_PATH=/path/to/ComfyUI python tools/workflow_screenshots.py [--out docs/workflows]

The python must be one ComfyUI runs with (the tests' venv) with playwright installed, and
/usr/bin/chromium must exist (scripts/setup_env.sh). Nothing is run and no model is needed:
the checkpoint the workflows name is an empty placeholder file, which ComfyUI lists without
reading it. tests/test_browser.py runs screenshot_workflows too."""
import argparse
import json
import os
import shutil
import sys
import tempfile

from browser_support import (GRAPH_STATE, REPO, SETTLE, browser_problem, comfyui_server, drop_workflow,
                             launch_chromium, open_editor)
from shipped_files import EXAMPLE_IMAGES, WORKFLOWS


VIEWPORT = (1600, 900)  # CSS pixels
PIXEL_RATIO = 2  # device pixels per CSS pixel: node text stays sharp at the zoom a whole graph needs
SCREENSHOT_SIZE = (VIEWPORT[0] * PIXEL_RATIO, VIEWPORT[1] * PIXEL_RATIO)
MARGIN = 24  # CSS pixels of canvas around the graph
MAX_BYTES = 500_000  # larger PNGs are reduced to a 256-colour palette

# For a clean drawing: no minimap, no canvas info (fps and counts) or zoom buttons, and node
# text drawn at any zoom (by default the canvas leaves text out below 8 pixels). Set for the
# page only: the previous values are put back afterwards.
DRAWING_SETTINGS = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
                    "Comfy.Graph.CanvasMenu": False, "LiteGraph.Canvas.MinFontSizeForLOD": 1}

# Change settings; resolves to the previous values of those the frontend had.
SET_SETTINGS = """async (values) => {
    const settings = app.extensionManager.setting, previous = {};
    for (const [id, value] of Object.entries(values)) {
        previous[id] = settings.get(id);
        await settings.set(id, value);
    }
    return previous;
}"""

# Zoom and pan so that every node (title included) fills the canvas less a margin, centred.
FIT_GRAPH = """(margin) => {
    const canvas = app.canvas, nodes = app.graph.nodes;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of nodes) {
        const [x, y, w, h] = node.boundingRect;
        [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x + w), Math.max(y1, y + h)];
    }
    const width = canvas.canvas.clientWidth, height = canvas.canvas.clientHeight;
    const scale = Math.min((width - 2 * margin) / (x1 - x0), (height - 2 * margin) / (y1 - y0));
    canvas.ds.scale = scale;
    canvas.ds.offset = [width / 2 / scale - (x0 + x1) / 2, height / 2 / scale - (y0 + y1) / 2];
    canvas.setDirty(true, true);
    return scale;
}"""

# After a frame: whether every node lies inside the area the canvas drew (graph units).
IN_VIEW = """() => {
    const [vx, vy, vw, vh] = app.canvas.visible_area;
    return app.graph.nodes.every(node => {
        const [x, y, w, h] = node.boundingRect;
        return x >= vx && y >= vy && x + w <= vx + vw && y + h <= vy + vh;
    });
}"""

# Hidden in the picture: focus mode's one remaining button (the menu, top right).
SCREENSHOT_STYLE = "button:has(.pi-bars) { visibility: hidden !important; }"


# The model loaders of the shipped workflows: the folder each reads, and how many file names it takes
LOADERS = {"CheckpointLoaderSimple": ("checkpoints", 1), "UNETLoader": ("diffusion_models", 1),
           "DualCLIPLoader": ("text_encoders", 2), "VAELoader": ("vae", 1)}


def prepare_folders(root, workflows=WORKFLOWS):
    """Create `root`/input with the example images (the shipped workflows' Load Image nodes
    show them) and a folder per model kind with an empty placeholder for each model file the
    workflows name; return (the input folder, {model folder name: path})."""
    input_dir = os.path.join(root, "input")
    model_dirs = {folder: os.path.join(root, folder) for folder, _ in LOADERS.values()}
    for folder in (input_dir, *model_dirs.values()):
        os.makedirs(folder)
    for path in EXAMPLE_IMAGES:
        shutil.copy(path, input_dir)
    for path in workflows:
        for node in json.load(open(path))["nodes"]:
            if node["type"] in LOADERS:
                folder, count = LOADERS[node["type"]]
                for name in node["widgets_values"][:count]:
                    open(os.path.join(model_dirs[folder], name), "ab").close()
    return input_dir, model_dirs


def _save_small(path):
    """Rewrite the PNG at `path` compressed harder; as a palette image if still too big."""
    from PIL import Image
    image = Image.open(path)
    image.load()
    image.save(path, optimize=True)
    if os.path.getsize(path) > MAX_BYTES:
        image.convert("RGB").quantize(256).save(path, optimize=True)


def screenshot_workflows(browser, url, workflows, out_dir):
    """Draw each workflow file in the editor served at `url` (with a Playwright `browser`)
    and save `<out_dir>/<workflow name>.png`, SCREENSHOT_SIZE pixels. Returns, per workflow,
    {"path", "scale" (the zoom), "in_view" (every node drawn whole), "warnings" (what the
    editor reported on load, shown in the picture too)}. Raises RuntimeError if the page had
    script errors."""
    os.makedirs(out_dir, exist_ok=True)
    page = open_editor(browser, url, VIEWPORT, PIXEL_RATIO)
    shots = []
    try:
        previous = page.evaluate(SET_SETTINGS, DRAWING_SETTINGS)
        try:
            page.evaluate("() => { app.extensionManager.focusMode = true; }")  # no menus or side bars
            for path in workflows:
                name = os.path.splitext(os.path.basename(path))[0]
                drop_workflow(page, open(path).read(), os.path.basename(path))
                scale = page.evaluate(FIT_GRAPH, MARGIN)
                page.evaluate(SETTLE)
                shot = {"path": os.path.join(out_dir, name + ".png"), "scale": scale,
                        "in_view": page.evaluate(IN_VIEW), "warnings": page.evaluate(GRAPH_STATE)["reports"]}
                page.screenshot(path=shot["path"], style=SCREENSHOT_STYLE)
                _save_small(shot["path"])
                shots.append(shot)
        finally:
            page.evaluate(SET_SETTINGS, previous)
        if page.errors:
            raise RuntimeError(f"script errors in the editor: {page.errors}")
    finally:
        page.context.close()
    return shots


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "workflows"),
                        help="folder for the PNGs (default: docs/workflows in this repository)")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"),
                        help="the ComfyUI folder to run (default: $COMFYUI_PATH)")
    parser.add_argument("workflows", nargs="*", default=WORKFLOWS,
                        help="workflow files (default: workflows/*.json)")
    args = parser.parse_args(argv)
    if not args.comfyui or not os.path.isfile(os.path.join(args.comfyui, "main.py")):
        parser.error("set COMFYUI_PATH (or --comfyui) to a ComfyUI folder")
    problem = browser_problem()
    if problem:
        parser.error(problem)
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory(prefix="workflow-screenshots-") as root:
        input_dir, model_dirs = prepare_folders(root, args.workflows)
        with comfyui_server(args.comfyui, os.path.join(root, "server"), input_dir, model_dirs,
                            log_path=os.path.join(root, "comfyui-server.log")) as server, \
                sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                shots = screenshot_workflows(browser, server.url, args.workflows, args.out)
            finally:
                browser.close()
    failed = False
    for shot in shots:
        print(f"{os.path.relpath(shot['path'])}: zoom {shot['scale']:.2f}, {os.path.getsize(shot['path']) // 1000} kB")
        if not shot["in_view"]:
            print("  not every node is in the picture")
        for warning in shot["warnings"]:
            print("  the editor warns: " + " / ".join(warning.split("\n")))
        failed |= not shot["in_view"] or bool(shot["warnings"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
