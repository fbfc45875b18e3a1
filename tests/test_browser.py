"""The shipped workflows in the real ComfyUI editor: a ComfyUI server with this pack, its own
frontend in headless Chromium, a workflow dropped on the canvas, queued and run on CPU with a
generated random-weight SD1.5 checkpoint. Screenshots go to artifacts/browser/."""
import json
import os

import pytest
from PIL import Image

import headless
from browser_support import (ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, DROP_FILE, GRAPH_STATE, PACK_NAME,
                             QUEUE, comfyui_server)
from shipped import IMAGE_SIZE, WORKFLOWS

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(comfy_dirs, sd15_checkpoint, example_inputs, tmp_path_factory):
    """ComfyUI (COMFYUI_PATH) serving its frontend on a free loopback port, with this pack,
    the test checkpoint and the example images (the same folders as the in-process tests);
    stopped after this module's tests."""
    with comfyui_server(os.environ["COMFYUI_PATH"], tmp_path_factory.mktemp("server"),
                        input_dir=comfy_dirs["input"], checkpoints_dir=comfy_dirs["checkpoints"],
                        log_path=os.path.join(ARTIFACTS, "comfyui-server.log")) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's), driven by Playwright, with a fresh profile. Module-scoped:
    Playwright's sync API keeps an asyncio loop running in this thread while it is open, and
    the in-process tests in other modules call asyncio.run()."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup_env.sh as root or `apt-get install chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install -r tests/requirements.txt`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """The editor, opened and ready (window.app and its graph exist). Requests that would
    leave the machine (the frontend asks api.comfy.org about releases and node packs) fail
    at once. Uncaught script errors are collected in page.errors."""
    context = browser.new_context(viewport={"width": 2560, "height": 1440})
    context.route(lambda url: not url.startswith(server.url + "/"), lambda route: route.abort())
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(error))
    page.goto(server.url)
    page.wait_for_function("window.app?.graph && window.app.canvas && LiteGraph.registered_node_types",
                           timeout=60_000)
    yield page
    context.close()


def test_workflow_templates_list_the_shipped_workflows(server):
    """ComfyUI offers the pack's workflows/ as templates, under the pack's folder name."""
    names = [os.path.splitext(os.path.basename(path))[0] for path in WORKFLOWS]
    assert sorted(server.get("/workflow_templates").get(PACK_NAME, [])) == sorted(names)


def test_a_missing_node_type_is_reported(page):
    """The check below would see a missing node: the editor opens its warning dialog."""
    workflow = json.load(open(WORKFLOWS[0]))
    workflow["nodes"][0]["type"] = "NoSuchNode"
    page.evaluate(DROP_FILE, [json.dumps(workflow), "broken.json"])
    state = page.evaluate(GRAPH_STATE)
    assert any("NoSuchNode" in dialog for dialog in state["dialogs"])
    assert not next(n for n in state["nodes"] if n["type"] == "NoSuchNode")["registered"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_shipped_workflow_loads_and_runs_in_the_editor(page, server, comfy_nodes, path):
    """Dropped on the canvas, the workflow loads without missing nodes, broken links, invalid
    values or dialogs; the frontend's prompt is the one the headless runner builds, and
    queued from the page it runs and saves an image of the input size."""
    name = os.path.splitext(os.path.basename(path))[0]
    text = open(path).read()
    page.evaluate(DROP_FILE, [text, os.path.basename(path)])
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}-loaded.png"))

    workflow = json.loads(text)
    state = page.evaluate(GRAPH_STATE)
    assert sorted((n["id"], n["type"]) for n in state["nodes"]) == \
        sorted((n["id"], n["type"]) for n in workflow["nodes"])
    assert [n["type"] for n in state["nodes"] if not n["registered"]] == []
    assert len(state["links"]) == len(workflow["links"])
    for link in state["links"]:
        assert link["output_type"] == link["type"] == link["input_type"] and link["input_link"] == link["id"], link
    assert state["bad_values"] == []
    assert state["dialogs"] == []

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
    page.wait_for_function("(id) => app.graph.getNodeById(id)?.imgs?.[0]?.complete", arg=int(node),
                           timeout=30_000)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}-done.png"))
    assert page.errors == []
