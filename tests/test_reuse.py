"""Work reuse across runs: changing only contrast, guidance or AdaIN settings re-runs the
sampler but not the inversions (ComfyUI's cache keeps them: the inversion nodes do not take
those inputs). Counted in UNet batch items over two prompts through the real engine."""
import copy
import json

import headless
from shipped import WORKFLOWS

DDPM_INVERTS = {"CrossImageInvertDDPM", "CrossImageInvertPairDDPM"}
FULL = next(path for path in WORKFLOWS if path.endswith("cross_image_attention_full.json"))


def node_id(prompt, class_type, index=0):
    return [key for key, value in prompt.items() if value["class_type"] == class_type][index]


def test_changing_only_sampling_settings_reuses_the_inversions(comfy_nodes, sd15_checkpoint, example_inputs,
                                                               monkeypatch):
    import comfy.model_base
    prompt = headless.workflow_to_prompt(json.load(open(FULL)), headless.node_definitions(comfy_nodes))
    inverts = [key for key, value in prompt.items() if value["class_type"] in DDPM_INVERTS]
    assert inverts
    for key in inverts:  # fewer steps than the paper, to keep the CPU test short
        prompt[key]["inputs"].update(steps=20, skip=6)
    items = []
    apply_model = comfy.model_base.BaseModel.apply_model

    def counted(self, x, *args, **kwargs):
        items.append(x.shape[0])
        return apply_model(self, x, *args, **kwargs)
    monkeypatch.setattr(comfy.model_base.BaseModel, "apply_model", counted)

    engine = headless.Engine()
    engine.run(prompt)
    first = sum(items)
    changed = copy.deepcopy(prompt)
    changed[node_id(prompt, "CrossImageAttentionContrast")]["inputs"]["strength"] = 2.0
    changed[node_id(prompt, "CrossImageAppearanceGuidance")]["inputs"]["scale"] = 3.0
    changed[node_id(prompt, "CrossImageLatentAdaIN")]["inputs"]["start"] = 0.4
    items.clear()
    engine.run(changed)
    second = sum(items)

    cached = {node for event, data in engine.executor.status_messages if event == "execution_cached"
              for node in data["nodes"]}
    segmentations = [node_id(prompt, "CrossImageSelfSegmentation", i) for i in range(2)]
    assert set(inverts + segmentations) <= cached
    # the first run also inverted both images (14 sampled steps x 2 for CFG each, together or apart) and read
    # the attention of each once for self-segmentation; the second did only the sampling
    assert first - second == 2 * 14 * 2 + 2
    assert second > 0
