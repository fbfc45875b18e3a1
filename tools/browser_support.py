"""A real ComfyUI server, started from a ComfyUI folder in a subprocess with this pack loaded
as a custom node, and the page scripts that drive its frontend in headless Chromium (Debian's
/usr/bin/chromium, through Playwright). Used by the browser tests and by
tools/workflow_screenshots.py.

Nothing is written into the ComfyUI folder: the pack, the checkpoints, the input, output,
temp and user folders and the database all live in folders given on the command line.

The page scripts work with the frontends of ComfyUI 0.3.75 (comfyui-frontend-package 1.32)
and 0.33 (1.49); where those differ, the difference is named where it is handled."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "comfyui-cross-image-attention"  # the pack's folder name inside custom_nodes/

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup_env.sh installs it)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

# Frontend settings for the temporary user: skip the first-run template browser (it opens
# over an empty graph) and keep the warnings on load that the tests look for. Frontend 1.49
# has no missing-nodes setting (it always reports them); a setting a frontend does not know
# is stored and ignored.
SETTINGS = {"Comfy.TutorialCompleted": True,
            "Comfy.Workflow.ShowMissingNodesWarning": True,
            "Comfy.Workflow.ShowMissingModelsWarning": True}


class Server:
    """A running ComfyUI: its address, output folder and log."""

    def __init__(self, url, output_dir, log_path):
        self.url, self.output_dir, self.log_path = url, output_dir, log_path

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def log_tail(self, chars=6000):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-chars:]

    def wait_for_history(self, prompt_id, timeout):
        """The /history entry of a prompt once it has finished (successfully or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)  # there once it has finished
            if entry:
                return entry
            time.sleep(1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s\n{self.log_tail()}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def comfyui_server(comfy_path, root, input_dir, model_dirs, log_path, timeout=90, custom_nodes=None, pythonpath=()):
    """Start `python main.py --cpu` from `comfy_path` with this pack, the given folders
    (model_dirs: {ComfyUI's folder name, e.g. "checkpoints": path}; `root`, which must not exist
    yet or be empty, gets the rest), further custom node packages ({name: folder}) and PYTHONPATH
    entries; yield a Server once GET /object_info answers; stop the server on exit."""
    root = str(root)
    dirs = {name: os.path.join(root, name) for name in ("custom_nodes", "output", "temp", "user")}
    for d in dirs.values():
        os.makedirs(d)
    for name, folder in {PACK_NAME: REPO, **(custom_nodes or {})}.items():
        os.symlink(folder, os.path.join(dirs["custom_nodes"], name), target_is_directory=True)
    os.makedirs(os.path.join(dirs["user"], "default"))
    with open(os.path.join(dirs["user"], "default", "comfy.settings.json"), "w") as f:
        json.dump(SETTINGS, f)
    config = os.path.join(root, "extra_model_paths.yaml")
    with open(config, "w") as f:  # JSON is YAML
        json.dump({"cross_image_attention_tests": {"custom_nodes": dirs["custom_nodes"],
                                                   **{name: str(path) for name, path in model_dirs.items()}}}, f)
    port = _free_port()
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--extra-model-paths-config", config, "--input-directory", str(input_dir),
               "--output-directory", dirs["output"], "--temp-directory", dirs["temp"],
               "--user-directory", dirs["user"], "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch", "--disable-api-nodes"]
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "w") as log:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), os.environ.get("PYTHONPATH", "")])}
        process = subprocess.Popen(command, cwd=comfy_path, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
        server = Server(f"http://127.0.0.1:{port}", dirs["output"], log_path)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited with code {process.returncode}:\n{server.log_tail()}")
                try:
                    server.get("/object_info")
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"ComfyUI did not answer in {timeout} s:\n{server.log_tail()}")
                    time.sleep(0.5)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def browser_problem():
    """Why the browser cannot be driven here (a message), or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: run scripts/setup_env.sh as root or `apt-get install chromium`"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: `pip install -r tests/requirements.txt`"
    return None


def launch_chromium(playwright):
    """Headless Debian Chromium with a fresh profile (Playwright's own browsers are not used)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def open_editor(browser, url, viewport=(2560, 1440), device_scale_factor=1):
    """A page in a new browser context with the editor at `url` open and ready (its app,
    canvas and graph exist). Requests that would leave the machine (the frontend asks
    api.comfy.org about releases and node packs) fail at once. Uncaught script errors are
    collected in page.errors. Close with page.context.close()."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                  device_scale_factor=device_scale_factor)
    context.route(lambda address: not address.startswith(url + "/"), lambda route: route.abort())
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(error))
    page.goto(url)
    page.wait_for_function("window.app?.canvas && window.app.graph && LiteGraph.registered_node_types",
                           timeout=60_000)
    return page


# Page scripts (run with page.evaluate; `app` is the frontend's ComfyApp, `LiteGraph` its graph
# library, `comfyAPI.api.api` its server client).

# Drop a workflow file on the canvas the way a user's drag-and-drop does; resolves when the
# frontend's drop handler has finished loading it (its app.handleFile call), then one more
# frame so that any dialog it opened is rendered. (Frontend 1.32 listens for the drop on the
# canvas, 1.49 on the document: the event bubbles from the canvas to both.)
DROP_FILE = """async ([text, name]) => {
    const handleFile = app.handleFile;
    const loaded = new Promise((resolve, reject) => {
        app.handleFile = (...args) => handleFile.apply(app, args).then(resolve, reject);
        setTimeout(() => reject(new Error("the drop did not load a file")), 30000);
    });
    try {
        const data = new DataTransfer();
        data.items.add(new File([text], name, {type: "application/json"}));
        app.canvasEl.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
        await loaded;
    } finally {
        delete app.handleFile;
    }
    await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
}"""

# Wait until the page's finite CSS animations and transitions are over (the screen-blocking
# mask the frontend shows while it loads a file fades out) and a frame has been drawn.
SETTLE = """async () => {
    const finite = document.getAnimations().filter(a => a.effect?.getComputedTiming().endTime !== Infinity);
    await Promise.all(finite.map(a => a.finished.catch(() => null)));
    await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
}"""

# What the editor shows: its nodes (ids as strings: frontend 1.32 keeps a workflow's numeric
# ids as numbers, 1.49 turns them into strings), its links with the types of the slots they
# join, combo widgets whose value is not among the choices, and the warnings it shows about
# the loaded workflow: a dialog (1.32: missing nodes or models) or the errors overlay (1.49,
# which has no such dialogs).
GRAPH_STATE = """() => {
    const graph = app.graph;
    const links = graph.links instanceof Map ? [...graph.links.values()] : Object.values(graph.links ?? {});
    const byId = id => graph.nodes.find(n => String(n.id) === String(id));
    const choices = (w, n) => typeof w.options?.values === "function" ? w.options.values(w, n) : w.options?.values;
    return {
        nodes: graph.nodes.map(n => ({id: String(n.id), type: n.type,
                                      registered: n.type in LiteGraph.registered_node_types})),
        links: links.filter(l => l).map(l => {
            const origin = byId(l.origin_id), target = byId(l.target_id);
            const input = target?.inputs?.[l.target_slot];
            return {id: String(l.id), type: l.type, output_type: origin?.outputs?.[l.origin_slot]?.type ?? null,
                    input_type: input?.type ?? null, input_link: input?.link == null ? null : String(input.link)};
        }),
        combos: graph.nodes.flatMap(n => (n.widgets ?? []).filter(w => w.type === "combo").map(w => {
            const values = choices(w, n);
            return {widget: `${n.type} #${n.id}: ${w.name}`, value: w.value,
                    valid: Array.isArray(values) && values.includes(w.value)};
        })),
        reports: [...document.querySelectorAll(".p-dialog, [data-testid=error-overlay]")]
            .filter(e => e.checkVisibility?.() ?? true).map(e => e.innerText),
    };
}"""

# Whether the node with this id (either form) shows a loaded image (the frontends attach the
# images of a node's executed output, and a Load Image node's input, as node.imgs).
NODE_SHOWS_IMAGE = """(id) => {
    const node = app.graph.nodes.find(n => String(n.id) === String(id));
    return Boolean(node?.imgs?.length && node.imgs.every(img => img.complete && img.naturalWidth > 0));
}"""

# Convert the graph with the frontend's own graphToPrompt and queue it as the Run button does.
QUEUE = """async () => {
    const prompt = await app.graphToPrompt();
    try {
        return {prompt: prompt.output, response: await comfyAPI.api.api.queuePrompt(0, prompt)};
    } catch (error) {
        return {prompt: prompt.output, error: error.response ?? String(error)};
    }
}"""


def drop_workflow(page, text, name):
    """Drop the workflow `text` (file name `name`) on the canvas and wait until it is loaded
    and the page has settled."""
    page.evaluate(DROP_FILE, [text, name])
    page.evaluate(SETTLE)

# Queue the graph as the editor's Queue button does (app.queuePrompt: the control widgets act
# after it, e.g. "control after generate" on seeds); resolves to the prompt ids in /history
# before, so that the caller can find the new one.
QUEUE_FROM_EDITOR = """async () => {
    const before = Object.keys(await (await fetch("/history")).json());
    await app.queuePrompt(0, 1);
    return before;
}"""

# A node's widgets as {name: value}, after setting those in `values` (as a user's edit does).
NODE_WIDGETS = """([id, values]) => {
    const node = app.graph.nodes.find(n => String(n.id) === String(id));
    for (const [name, value] of Object.entries(values ?? {})) {
        const widget = node.widgets.find(w => w.name === name);
        widget.value = value;
        widget.callback?.(value);
    }
    return node.widgets.map(w => [w.name, w.value]);
}"""
