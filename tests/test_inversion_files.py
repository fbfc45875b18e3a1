"""Save Inversion / Load Inversion: safetensors round trip, folder confinement, clear errors."""
import pytest
import torch
from safetensors.torch import save_file

import headless
import tiny_models


@pytest.fixture(scope="module")
def structure(node, tiny_model, cond):
    lat = {"samples": torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(3))}
    return node("CrossImageInvertDDIM").execute(tiny_model, lat, cond, 4, "normal", 1.0)[0]


def saved_name(node, inversion, prefix):
    result = node("CrossImageSaveInversion").execute(inversion, prefix)
    entry = result.ui["inversions"][0]
    return f"{entry['subfolder']}/{entry['filename']} [output]"


def test_round_trip_gives_the_same_inversion_and_output(node, tiny_model, cond, structure, comfy_dirs):
    name = saved_name(node, structure, "tests/structure")
    assert name.startswith("tests/structure_00001_") and name in headless.combo_choices(
        headless.node_definition(node("CrossImageLoadInversion"))["input"]["required"]["inversion"])
    assert node("CrossImageLoadInversion").validate_inputs(name) is True
    (loaded,) = node("CrossImageLoadInversion").execute(name)
    assert torch.equal(loaded.trajectory, structure.trajectory) and torch.equal(loaded.sigmas, structure.sigmas)
    assert loaded.model_key == structure.model_key and loaded.method == structure.method
    (a,) = node("CrossImageSampler").execute(tiny_model, cond, structure, "euler", 1.0)
    (b,) = node("CrossImageSampler").execute(tiny_model, cond, loaded, "euler", 1.0)
    assert torch.equal(a["samples"], b["samples"])
    assert saved_name(node, structure, "tests/structure").startswith("tests/structure_00002_")


def test_loaded_inversion_from_another_model_is_refused(node, cond, structure):
    (loaded,) = node("CrossImageLoadInversion").execute(saved_name(node, structure, "tests/other"))
    other_model = tiny_models.tiny_model(seed=0, channel_mult=(1, 2))
    with pytest.raises(ValueError, match="structure: this inversion was made with a different model"):
        node("CrossImageSampler").execute(other_model, cond, loaded, "euler", 1.0)


def test_names_outside_the_folders_and_foreign_files_are_refused(node, comfy_dirs):
    loader = node("CrossImageLoadInversion")
    save_file({"x": torch.zeros(2)}, str(comfy_dirs["input"] / "plain.safetensors"))
    (comfy_dirs["input"] / "pickle.pt").write_bytes(b"not allowed")
    for name, message in [("../../etc/passwd.safetensors", "outside ComfyUI's input/output folders"),
                          ("../checkpoints/x.safetensors [output]", "outside ComfyUI's input/output folders"),
                          ("pickle.pt", "is not a .safetensors file"),
                          ("absent.safetensors", "no file"),
                          ("plain.safetensors", "not a saved inversion")]:
        with pytest.raises(ValueError, match=message):
            loader.execute(name)
    assert "outside" in loader.validate_inputs("../../etc/passwd.safetensors")


def test_save_rejects_non_inversions(node):
    with pytest.raises(ValueError, match="inversion: expected an inversion"):
        node("CrossImageSaveInversion").execute({"samples": torch.zeros(1)}, "x")


def test_ddpm_noise_maps_survive_the_round_trip(node, tiny_model, cond):
    lat = {"samples": torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(4))}
    inversion, _ = node("CrossImageInvertDDPM").execute(tiny_model, lat, cond, 6, "normal", 1.0, 2, 0)
    (loaded,) = node("CrossImageLoadInversion").execute(saved_name(node, inversion, "tests/ddpm"))
    assert loaded.method == "ddpm" and torch.equal(loaded.noise, inversion.noise)


def write(inversion, path):
    tensors, metadata = inversion.to_tensors()
    save_file(tensors, str(path), metadata=metadata)


def test_names_are_taken_exactly_and_links_out_of_the_folders_refused(node, structure, comfy_dirs, tmp_path):
    """' same.safetensors' is not 'same.safetensors'; a link in input/ to a file or folder
    elsewhere does not make that file loadable; the temp folder is not an inversion folder."""
    write(structure, comfy_dirs["input"] / " same.safetensors")
    loader = node("CrossImageLoadInversion")
    (loaded,) = loader.execute(" same.safetensors")
    assert torch.equal(loaded.trajectory, structure.trajectory)
    with pytest.raises(ValueError, match="no file 'same.safetensors'"):
        loader.execute("same.safetensors")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write(structure, outside / "secret.safetensors")
    (comfy_dirs["input"] / "link.safetensors").symlink_to(outside / "secret.safetensors")
    (comfy_dirs["input"] / "linked_folder").symlink_to(outside, target_is_directory=True)
    for name in ("link.safetensors", "linked_folder/secret.safetensors"):
        with pytest.raises(ValueError, match="points outside ComfyUI's input/output folders"):
            loader.execute(name)
    with pytest.raises(ValueError, match="temp folder"):
        loader.execute("x.safetensors [temp]")


def test_the_change_check_does_not_read_the_file(node, structure, comfy_dirs, monkeypatch):
    import builtins
    path = comfy_dirs["input"] / "fingerprint.safetensors"
    write(structure, path)
    loader = node("CrossImageLoadInversion")
    first = loader.fingerprint_inputs("fingerprint.safetensors")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: pytest.fail("the change check opened the file"))
    assert loader.fingerprint_inputs("fingerprint.safetensors") == first
    monkeypatch.setattr(builtins, "open", real_open)
    path.write_bytes(path.read_bytes() + b" ")  # rewritten: another size and time
    assert loader.fingerprint_inputs("fingerprint.safetensors") != first


@pytest.mark.parametrize("prefix", ["", "./", "cross_image/", " . "])
def test_a_prefix_without_a_file_name_is_refused(node, structure, comfy_dirs, prefix):
    before = sorted(p.name for p in comfy_dirs["output"].rglob("*"))
    with pytest.raises(ValueError, match="filename_prefix: .* has no file name"):
        node("CrossImageSaveInversion").execute(structure, prefix)
    assert sorted(p.name for p in comfy_dirs["output"].rglob("*")) == before
