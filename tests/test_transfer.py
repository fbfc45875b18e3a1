"""The headless transfer command (scripts/transfer.py)."""
import pytest
from PIL import Image

import transfer
from shipped import EXAMPLE_IMAGES


def test_without_checkpoint_it_says_so_and_offers_the_demo(tmp_path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        transfer.find_checkpoint(transfer.parse_args([]), str(tmp_path))
    message = str(exit_info.value)
    assert "No Stable Diffusion checkpoint found" in message and "--demo" in message and "noise" in message


def test_missing_files_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--checkpoint: no such file"):
        transfer.find_checkpoint(transfer.parse_args(["--checkpoint", str(tmp_path / "x.safetensors")]), "")
    with pytest.raises(SystemExit, match="--structure: no such image file"):
        transfer.main(["--structure", str(tmp_path / "missing.png")])


@pytest.fixture
def keep_comfy_folders(comfy_nodes):
    """transfer.main points ComfyUI at its own temporary folders; put the session's back."""
    import folder_paths
    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    yield
    folder_paths.set_input_directory(saved[0])
    folder_paths.set_output_directory(saved[1])


def test_transfer_writes_the_result(tmp_path, comfy_dirs, sd15_checkpoint, keep_comfy_folders, capsys):
    images = []
    for path in EXAMPLE_IMAGES:
        images.append(tmp_path / f"in_{len(images)}.png")
        Image.open(path).resize((64, 80)).save(images[-1])
    out = tmp_path / "result.png"
    checkpoint = comfy_dirs["checkpoints"] / sorted(sd15_checkpoint)[0]
    transfer.main(["--checkpoint", str(checkpoint), "--structure", str(images[0]), "--appearance",
                   str(images[1]), "--steps", "3", "--out", str(out)])
    assert Image.open(out).size == (64, 80)
    printed = capsys.readouterr().out
    assert "step 3/3" in printed and f"wrote {out}" in printed
