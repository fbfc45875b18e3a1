"""Appearance transfer from the command line, through ComfyUI's own engine (no browser).

Runs the shipped workflow (workflows/cross_image_attention_basic.json) on a structure image
and an appearance image and writes the result. Start it with scripts/transfer.sh, which
prepares the environment, or with the Python that runs your ComfyUI when the pack sits in its
custom_nodes/ folder (ComfyUI is found there, or at COMFYUI_PATH); `--help` lists the options.
"""
import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

import headless

WORKFLOW = os.path.join(headless.REPO, "workflows", "cross_image_attention_basic.json")
EXAMPLES = os.path.join(headless.REPO, "workflows")
DEMO_CHECKPOINT = "random-sd15-demo.safetensors"
DEMO_SIZE, DEMO_STEPS = 128, 8  # the demo shows the path, not a picture: small and short
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".sft")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="an SD1.5 checkpoint file (default: the first one in ComfyUI's "
                                             "models/checkpoints)")
    parser.add_argument("--structure", default=os.path.join(EXAMPLES, "cross_image_structure.png"),
                        help="image whose layout and shapes to keep (default: the shipped example)")
    parser.add_argument("--appearance", default=os.path.join(EXAMPLES, "cross_image_appearance.png"),
                        help="image whose colours and textures to transfer (default: the shipped example)")
    parser.add_argument("--prompt", default="a photo of an animal", help="one prompt describing both images")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"inversion/sampling steps (default: the workflow's 50; {DEMO_STEPS} with --demo)")
    parser.add_argument("--size", type=int, default=None,
                        help=f"resize both images so their longer side has this many pixels (a multiple of 8; "
                             f"default: as they are; {DEMO_SIZE} with --demo)")
    parser.add_argument("--out", default="cross_image_output.png", help="where to write the result (PNG)")
    parser.add_argument("--demo", action="store_true",
                        help="no checkpoint? use a generated random-weight SD1.5 checkpoint on small images and few "
                             "steps: exercises the whole path in a minute or two on a CPU, but the output is NOISE")
    args = parser.parse_args(argv)
    if args.demo:
        args.steps = args.steps or DEMO_STEPS
        args.size = args.size or DEMO_SIZE
    if args.size is not None and (args.size < 64 or args.size % 8):
        parser.error(f"--size: a multiple of 8 of at least 64, got {args.size}")
    return args


def comfyui_folder() -> str:
    """COMFYUI_PATH, else the ComfyUI this pack sits in (custom_nodes/), else an error."""
    if os.environ.get("COMFYUI_PATH"):
        return os.environ["COMFYUI_PATH"]
    grand = os.path.dirname(os.path.dirname(headless.REPO))
    if os.path.basename(os.path.dirname(headless.REPO)) == "custom_nodes" and os.path.isfile(
            os.path.join(grand, "comfy", "sd.py")):
        return grand
    sys.exit("No ComfyUI found: put this pack in ComfyUI/custom_nodes/, set COMFYUI_PATH, or run "
             "`bash scripts/transfer.sh`, which sets one up")


def find_checkpoint(args, comfy_path):
    """(folder, file name) of the checkpoint to use, or exit with a plain message."""
    if args.demo:
        cache = os.environ.get("CIA_CACHE", os.path.expanduser("~/.cache/comfyui-cross-image-attention"))
        folder = os.path.join(cache, "demo")
        path = os.path.join(folder, DEMO_CHECKPOINT)
        if not os.path.exists(path):
            headless.use_comfyui(comfy_path)
            import make_test_checkpoint
            print(f"building a random-weight SD1.5 checkpoint at {path} (demo only) ...", flush=True)
            os.makedirs(folder, exist_ok=True)
            make_test_checkpoint.build_checkpoint(path)
        return folder, DEMO_CHECKPOINT
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            sys.exit(f"--checkpoint: no such file: {args.checkpoint}")
        return os.path.dirname(os.path.abspath(args.checkpoint)), os.path.basename(args.checkpoint)
    folder = os.path.join(comfy_path, "models", "checkpoints")
    found = sorted(f for f in glob.glob(os.path.join(folder, "*")) if f.lower().endswith(CHECKPOINT_EXTENSIONS))
    if not found:
        sys.exit("No Stable Diffusion checkpoint found: none was given with --checkpoint and "
                 f"{folder} has none.\nPass --checkpoint /path/to/an-SD1.5-checkpoint.safetensors, or run "
                 "with --demo to exercise the whole path on a generated random-weight checkpoint "
                 "(its output is noise, not a transfer).")
    return folder, os.path.basename(found[0])


def copy_image(source: str, target: str, size) -> tuple:
    """Copy an image for LoadImage, resized so its longer side is `size` (sides multiples of 8);
    returns its size."""
    from PIL import Image
    image = Image.open(source)
    if size:
        scale = size / max(image.size)
        image = image.convert("RGB").resize(tuple(max(8, round(side * scale / 8) * 8) for side in image.size))
    image.save(target)
    return image.size


def configure(prompt, checkpoint, structure, appearance, text, steps):
    """Set the workflow prompt's inputs by node type and title."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        elif node["class_type"] == "CLIPTextEncode":
            inputs["text"] = text
        elif node["class_type"] == "CrossImageInvertDDIM" and steps:
            inputs["steps"] = steps
    loaders = [node for node in prompt.values() if node["class_type"] == "LoadImage"]
    loaders[0]["inputs"]["image"], loaders[1]["inputs"]["image"] = structure, appearance
    return next(node["inputs"]["steps"] for node in prompt.values() if node["class_type"] == "CrossImageInvertDDIM")


def print_progress(value, total, preview, node_id=None):
    print(f"\r  step {value}/{total}", end="\n" if value >= total else "", flush=True)


def main(argv=None):
    args = parse_args(argv)
    comfy_path = comfyui_folder()
    for name in ("structure", "appearance"):
        if not os.path.isfile(getattr(args, name)):
            sys.exit(f"--{name}: no such image file: {getattr(args, name)}")
    folder, checkpoint = find_checkpoint(args, comfy_path)
    work = tempfile.mkdtemp(prefix="cross-image-")
    try:
        input_dir, output_dir = os.path.join(work, "input"), os.path.join(work, "output")
        os.makedirs(input_dir)
        # LoadImage reads from ComfyUI's input folder: give it copies under safe names.
        size = copy_image(args.structure, os.path.join(input_dir, "structure.png"), args.size)
        copy_image(args.appearance, os.path.join(input_dir, "appearance.png"), args.size)
        nodes = headless.start_comfyui(comfy_path, input_dir=input_dir, output_dir=output_dir,
                                       checkpoint_dirs=[folder])
        import comfy.utils
        comfy.utils.set_progress_bar_global_hook(print_progress)
        with open(WORKFLOW) as f:
            prompt = headless.workflow_to_prompt(json.load(f), headless.node_definitions(nodes))
        steps = configure(prompt, checkpoint, "structure.png", "appearance.png", args.prompt, args.steps)
        what = "random-weight demo checkpoint" if args.demo else checkpoint
        print(f"transferring {args.appearance} onto {args.structure}: {what}, {size[0]}x{size[1]} px, {steps} steps "
              "of DDIM inversion (both images) and of sampling ...", flush=True)
        started = time.perf_counter()
        outputs = headless.Engine().run(prompt)
        image = next(img for out in outputs.values() for img in out.get("images", []))
        shutil.copy(os.path.join(output_dir, image["subfolder"], image["filename"]), args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    label = " (random-weight demo checkpoint: the image is noise)" if args.demo else ""
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s{label}")


if __name__ == "__main__":
    main()
