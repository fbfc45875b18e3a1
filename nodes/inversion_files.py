"""Save Inversion / Load Inversion: keep an inversion across runs and restarts, as
safetensors (arrays and strings only, never pickle) inside ComfyUI's output/input folders."""
import os

import folder_paths
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.inversion import Inversion
from .inputs import require_inversion
from .sockets import CATEGORY, InversionSocket, io

EXTENSION = ".safetensors"


def saved_inversions() -> list:
    """Inversion files in the input folder, and in the output folder marked '[output]'."""
    found = []
    for base, suffix in ((folder_paths.get_input_directory(), ""), (folder_paths.get_output_directory(), " [output]")):
        for root, _, files in os.walk(base):
            for file in files:
                if file.endswith(EXTENSION):
                    found.append(os.path.relpath(os.path.join(root, file), base).replace(os.sep, "/") + suffix)
    return sorted(found)


def resolve(name: str) -> str:
    """The file an annotated name means (exactly that name: no spaces trimmed), refusing
    anything that is, or through a link leads, outside ComfyUI's input and output folders."""
    relative, base = folder_paths.annotated_filepath(name)
    if name.endswith("[temp]"):
        raise ValueError(f"inversion: {name!r} is in ComfyUI's temp folder; inversions load from the input folder, "
                         "or the output folder with ' [output]'")
    base = os.path.realpath(base or folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath((base, path)) != base:
        raise ValueError(f"inversion: {name!r} points outside ComfyUI's input/output folders")
    if not path.endswith(EXTENSION):
        raise ValueError(f"inversion: {name!r} is not a {EXTENSION} file")
    if not os.path.isfile(path):
        raise ValueError(f"inversion: no file {name!r} in ComfyUI's input/output folders")
    return path


class CrossImageSaveInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageSaveInversion",
            display_name="Save Inversion",
            category=CATEGORY,
            description=("Saves an inversion to ComfyUI's output folder (safetensors), so later runs, even after a "
                         "restart, can load it instead of inverting the image again."),
            inputs=[
                InversionSocket.Input("inversion", tooltip="The inversion to keep."),
                io.String.Input("filename_prefix", default="cross_image/inversion",
                                tooltip="File name prefix inside the output folder; a counter is added. Load it with "
                                        "Load Inversion (listed as '... [output]')."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inversion, filename_prefix):
        require_inversion(inversion, "inversion")
        if not os.path.basename(filename_prefix.replace("\\", "/")).strip(". "):
            raise ValueError(f"filename_prefix: {filename_prefix!r} has no file name (it would write a hidden or "
                             "unnamed file); give one, e.g. 'cross_image/inversion'")
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        file = f"{filename}_{counter:05}_{EXTENSION}"
        tensors, metadata = inversion.to_tensors()
        save_file({k: v.cpu() for k, v in tensors.items()}, os.path.join(folder, file), metadata=metadata)
        return io.NodeOutput(ui={"inversions": [{"filename": file, "subfolder": subfolder, "type": "output"}]})


class CrossImageLoadInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageLoadInversion",
            display_name="Load Inversion",
            category=CATEGORY,
            description=("Loads an inversion saved by Save Inversion (from the input folder, or the output folder for "
                         "names ending in [output]). Only safetensors files are read."),
            inputs=[io.Combo.Input("inversion", options=saved_inversions(),
                                   tooltip="A saved inversion file (input folder, or '[output]' for the output "
                                           "folder).")],
            outputs=[InversionSocket.Output(display_name="inversion",
                                            tooltip="The saved inversion; the sampler checks it was made with the "
                                                    "same model and size.")],
        )

    @classmethod
    def fingerprint_inputs(cls, inversion):
        """Changes when the file is replaced or rewritten, without reading it (files can be GBs)."""
        stat = os.stat(resolve(inversion))
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    @classmethod
    def validate_inputs(cls, inversion):
        try:
            resolve(inversion)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, inversion):
        path = resolve(inversion)
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata()
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise ValueError(f"inversion {inversion!r}: not a readable safetensors file ({error})") from None
        return io.NodeOutput(Inversion.from_tensors(tensors, metadata, name=f"inversion {inversion!r}"))
