"""Helpers for the browser tests: a real ComfyUI server, started from COMFYUI_PATH in a
subprocess with this pack loaded as a custom node, and the page scripts that drive the
ComfyUI frontend in headless Chromium.

Nothing is written into the ComfyUI folder: the pack, the checkpoints, the input, output,
temp and user folders and the database all live in temporary folders given on the command
line."""
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
ARTIFACTS = os.path.join(REPO, "artifacts", "browser")

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup_env.sh installs it)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

# Frontend settings for the temporary user: skip the first-run template browser (it opens
# over an empty graph) and keep the warnings on load that the tests look for.
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
def comfyui_server(comfy_path, root, input_dir, checkpoints_dir, log_path, timeout=90):
    """Start `python main.py --cpu` from `comfy_path` with this pack and the given folders;
    yield a Server once GET /object_info answers; stop the server on exit."""
    root = str(root)
    dirs = {name: os.path.join(root, name) for name in ("custom_nodes", "output", "temp", "user")}
    for d in dirs.values():
        os.makedirs(d)
    os.symlink(REPO, os.path.join(dirs["custom_nodes"], PACK_NAME), target_is_directory=True)
    os.makedirs(os.path.join(dirs["user"], "default"))
    with open(os.path.join(dirs["user"], "default", "comfy.settings.json"), "w") as f:
        json.dump(SETTINGS, f)
    config = os.path.join(root, "extra_model_paths.yaml")
    with open(config, "w") as f:  # JSON is YAML
        json.dump({"cross_image_attention_tests": {"custom_nodes": dirs["custom_nodes"],
                                                   "checkpoints": str(checkpoints_dir)}}, f)
    port = _free_port()
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--extra-model-paths-config", config, "--input-directory", str(input_dir),
               "--output-directory", dirs["output"], "--temp-directory", dirs["temp"],
               "--user-directory", dirs["user"], "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch", "--disable-api-nodes"]
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=comfy_path, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
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


# Page scripts (run with page.evaluate; `app` is the frontend's ComfyApp, `LiteGraph` its graph
# library, `comfyAPI.api.api` its server client).

# Drop a workflow file on the canvas the way a user's drag-and-drop does; resolves when the
# frontend's drop handler has finished loading it (its app.handleFile call), then one more
# frame so that any dialog it opened is rendered.
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

# What the editor shows: its nodes, its links with the types of the slots they join, combo
# widgets whose value is not among the choices, and open dialogs.
GRAPH_STATE = """() => {
    const graph = app.graph;
    return {
        nodes: graph.nodes.map(n => ({id: n.id, type: n.type, registered: n.type in LiteGraph.registered_node_types})),
        links: [...graph.links.values()].map(l => {
            const origin = graph.getNodeById(l.origin_id), target = graph.getNodeById(l.target_id);
            const input = target?.inputs?.[l.target_slot];
            return {id: l.id, type: l.type, output_type: origin?.outputs?.[l.origin_slot]?.type ?? null,
                    input_type: input?.type ?? null, input_link: input?.link ?? null};
        }),
        bad_values: graph.nodes.flatMap(n => (n.widgets ?? [])
            .filter(w => w.type === "combo" && Array.isArray(w.options?.values) && !w.options.values.includes(w.value))
            .map(w => `${n.type} #${n.id}: ${w.name} = ${w.value}`)),
        dialogs: [...document.querySelectorAll(".p-dialog")].map(d => d.innerText),
    };
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
