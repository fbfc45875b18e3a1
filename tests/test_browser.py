"""The shipped workflows in the real ComfyUI editor: a ComfyUI server with this pack, its own
frontend in headless Chromium, a workflow dropped on the canvas, queued and run on CPU with a
generated random-weight SD1.5 checkpoint. Screenshots go to artifacts/browser/. The checks
hold for the frontends of ComfyUI 0.3.75 and 0.33 (see scripts/browser_support.py)."""
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

import headless
import workflow_screenshots
from browser_support import (GRAPH_STATE, NODE_SHOWS_IMAGE, NODE_WIDGETS, PACK_NAME, QUEUE, QUEUE_FROM_EDITOR,
                             browser_problem, comfyui_server, drop_workflow, launch_chromium, open_editor)
from shipped import IMAGE_SIZE, MODEL_FOLDERS, REPO, WORKFLOWS, with_retired_inputs

pytestmark = pytest.mark.browser

ARTIFACTS = os.path.join(REPO, "artifacts", "browser")
TESTS = os.path.join(REPO, "tests")


@pytest.fixture(scope="module")
def server(comfy_dirs, workflow_checkpoints, example_inputs, tmp_path_factory):
    """ComfyUI (COMFYUI_PATH) serving its frontend on a free loopback port, with this pack, the
    test models and the example images (the same folders as the in-process tests) and the tests'
    stand-ins (tests/server_nodes: what a CPU run cannot load); stopped after this module's tests."""
    with comfyui_server(os.environ["COMFYUI_PATH"], tmp_path_factory.mktemp("server"),
                        input_dir=comfy_dirs["input"],
                        model_dirs={name: comfy_dirs[name] for name in ("checkpoints", *MODEL_FOLDERS)},
                        custom_nodes={"cross-image-attention-test-stand-ins": os.path.join(TESTS, "server_nodes")},
                        pythonpath=[TESTS, os.path.join(REPO, "scripts")],
                        log_path=os.path.join(ARTIFACTS, "comfyui-server.log")) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's), driven by Playwright, with a fresh profile. Module-scoped:
    Playwright's sync API keeps an asyncio loop running in this thread while it is open, and
    the in-process tests in other modules call asyncio.run()."""
    problem = browser_problem()
    if problem:
        pytest.fail(problem)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """The editor, opened and ready; uncaught script errors are collected in page.errors."""
    page = open_editor(browser, server.url)
    yield page
    page.context.close()


def test_workflow_templates_list_the_shipped_workflows(server):
    """ComfyUI offers the pack's workflows/ as templates, under the pack's folder name."""
    names = [os.path.splitext(os.path.basename(path))[0] for path in WORKFLOWS]
    assert sorted(server.get("/workflow_templates").get(PACK_NAME, [])) == sorted(names)


def test_a_missing_node_type_is_reported(page):
    """The checks below would see a missing node: it stays in the graph as a node of no
    registered type, and the editor names it in the warning it shows on load (a dialog in
    one frontend, an errors overlay in the other)."""
    workflow = json.load(open(WORKFLOWS[0]))
    workflow["nodes"][0]["type"] = "NoSuchNode"
    drop_workflow(page, json.dumps(workflow), "broken.json")
    state = page.evaluate(GRAPH_STATE)
    assert [n["type"] for n in state["nodes"] if not n["registered"]] == ["NoSuchNode"]
    assert any("NoSuchNode" in report for report in state["reports"]), state["reports"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_shipped_workflow_loads_and_runs_in_the_editor(page, server, comfy_nodes, path):
    """Dropped on the canvas, the workflow loads without missing nodes, broken links, invalid
    values or warnings; the frontend's prompt is the one the headless runner builds, and
    queued from the page it runs and saves an image of the input size."""
    name = os.path.splitext(os.path.basename(path))[0]
    text = open(path).read()
    drop_workflow(page, text, os.path.basename(path))
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}-loaded.png"))

    workflow = json.loads(text)
    state = page.evaluate(GRAPH_STATE)
    assert sorted((n["id"], n["type"]) for n in state["nodes"]) == \
        sorted((str(n["id"]), n["type"]) for n in workflow["nodes"])
    assert [n["type"] for n in state["nodes"] if not n["registered"]] == []
    assert len(state["links"]) == len(workflow["links"])
    for link in state["links"]:
        assert link["output_type"] == link["type"] == link["input_type"] and link["input_link"] == link["id"], link
    assert state["combos"] and [c for c in state["combos"] if not c["valid"]] == []
    assert state["reports"] == []

    queued = page.evaluate(QUEUE)
    assert "error" not in queued, queued.get("error")
    assert queued["response"]["node_errors"] == {}
    expected = headless.workflow_to_prompt(workflow, headless.node_definitions(comfy_nodes))
    prompt = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in queued["prompt"].items()}
    assert prompt == expected  # the frontend adds only titles (_meta)

    # About 50 s on 2 idle CPU cores; a busy machine can take several times that.
    history = server.wait_for_history(queued["response"]["prompt_id"], timeout=600)
    assert history["status"]["status_str"] == "success", f"{history['status']}\n{server.log_tail()}"
    saved = {node: image for node, output in history["outputs"].items() for image in output.get("images", [])
             if image["type"] == "output"}
    assert len(saved) == 1
    [(node, image)] = saved.items()
    assert Image.open(os.path.join(server.output_dir, image["subfolder"], image["filename"])).size == IMAGE_SIZE

    # The editor got the result too: the node shows the saved image.
    page.wait_for_function(NODE_SHOWS_IMAGE, arg=node, timeout=30_000)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}-done.png"))
    assert page.errors == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_a_workflow_saved_with_retired_inputs_loads_as_the_shipped_one(page, comfy_nodes, path):
    """Saved by the previous nodes (with fast mode's inputs), the workflow loads without missing
    nodes, invalid values or warnings, and the editor's prompt is the shipped workflow's."""
    workflow = json.load(open(path))
    drop_workflow(page, json.dumps(with_retired_inputs(workflow)), "saved-before.json")
    state = page.evaluate(GRAPH_STATE)
    assert [n["type"] for n in state["nodes"] if not n["registered"]] == []
    assert [c for c in state["combos"] if not c["valid"]] == [] and state["reports"] == []
    output = page.evaluate("async () => (await app.graphToPrompt()).output")
    prompt = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in output.items()}
    assert prompt == headless.workflow_to_prompt(workflow, headless.node_definitions(comfy_nodes))
    assert page.errors == []


def test_workflow_screenshots(browser, server, tmp_path):
    """scripts/workflow_screenshots.py draws every shipped workflow, whole and without
    warnings, into a PNG of the set size that shows a graph (many colours, not a flat
    background)."""
    shots = workflow_screenshots.screenshot_workflows(browser, server.url, WORKFLOWS, str(tmp_path))
    assert sorted(os.path.basename(shot["path"]) for shot in shots) == \
        sorted(os.path.splitext(os.path.basename(path))[0] + ".png" for path in WORKFLOWS)
    for shot in shots:
        assert shot["in_view"] and shot["warnings"] == [], shot
        image = Image.open(shot["path"])
        assert image.size == workflow_screenshots.SCREENSHOT_SIZE
        pixels = np.asarray(image.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, shot
        assert pixels.std() > 10, shot


def queue_and_wait(page, server) -> dict:
    """Queue from the editor (the Queue action, control widgets included); the new prompt's
    finished /history entry."""
    before = set(page.evaluate(QUEUE_FROM_EDITOR))
    deadline = time.monotonic() + 60
    while not (new := set(server.get("/history")) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert new, "the queued prompt never reached the history"
    return server.wait_for_history(new.pop(), timeout=600)


def test_queueing_again_after_a_sampling_setting_reuses_the_inversions(page, server):
    """The full workflow queued twice from the editor, the attention contrast changed in between:
    the inversions' seed is the same both times (the seed widget's control stays put: fixed
    where the frontend offers modes, absent where it offers only randomize), so ComfyUI's
    cache keeps both inversions and the self-segmentation masks; only the sampling runs again."""
    workflow = json.load(open(next(p for p in WORKFLOWS if p.endswith("cross_image_attention_full.json"))))
    by_type = {}
    for node in workflow["nodes"]:
        by_type.setdefault(node["type"], []).append(str(node["id"]))
        if node["type"] == "CrossImageInvertPairDDPM":
            node["widgets_values"][:5] = [20, "ddim_uniform", 3.5, 6, 0]  # the mechanics, not the picture: short
    drop_workflow(page, json.dumps(workflow), "queue-twice.json")
    types = ("CrossImageInvertPairDDPM", "CrossImageAttentionContrast", "CrossImageSampler")
    (invert,), (contrast,), (sampler,) = (by_type[t] for t in types)
    controls = [value for _, value in page.evaluate(NODE_WIDGETS, [invert, {}])
                if value in ("fixed", "increment", "decrement", "randomize")]
    assert controls in ([], ["fixed"]), controls

    first = queue_and_wait(page, server)
    seed = dict(page.evaluate(NODE_WIDGETS, [invert, {}]))["seed"]
    page.evaluate(NODE_WIDGETS, [contrast, {"strength": 2.0}])
    second = queue_and_wait(page, server)
    assert first["status"]["status_str"] == second["status"]["status_str"] == "success", server.log_tail()
    assert seed == dict(page.evaluate(NODE_WIDGETS, [invert, {}]))["seed"] == 0
    cached = {str(node) for event, data in second["status"]["messages"] if event == "execution_cached"
              for node in data["nodes"]}
    assert {invert, *by_type["CrossImageSelfSegmentation"]} <= cached
    assert sampler not in cached and contrast not in cached
    assert page.errors == []
