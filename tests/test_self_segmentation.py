"""Self-Segmentation on the generated SD1.5 checkpoint (real CLIP tokenizer and text encoder)."""
import pytest
import torch


@pytest.fixture(scope="module")
def sd15(comfy_dirs, sd15_checkpoint):
    import comfy.sd
    path = str(comfy_dirs["checkpoints"] / sorted(sd15_checkpoint)[0])
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)
    return model, clip


def test_word_positions(pack, sd15):
    _, clip = sd15
    positions = pack.nodes.sampling.attention_maps.word_positions
    assert positions(clip, "a photo of an animal", "animal") == [5]  # after the start token
    assert positions(clip, "a photo of a red fox", "red fox") == [5, 6]
    with pytest.raises(ValueError, match="word: 'cat' is not a word of the prompt"):
        positions(clip, "a photo of an animal", "cat")


def test_masks_at_image_size_feed_latent_adain(node, sd15):
    model, clip = sd15
    lat = {"samples": torch.randn(2, 4, 12, 16, generator=torch.Generator().manual_seed(0))}
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of an animal"))
    inversion, _ = node("CrossImageInvertDDIM").execute(model, lat, cond, 4, "normal", 1.0)
    (mask,) = node("CrossImageSelfSegmentation").execute(model, clip, inversion, "a photo of an animal",
                                                         "animal", 0.5, 5, 1.4)
    assert mask.shape == (2, 96, 128)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and bool((mask.flatten(1).sum(1) > 0).all())
    node("CrossImageLatentAdaIN").execute(0.29, 1.0, mask, mask)
    assert "patches_replace" not in model.model_options["transformer_options"]
    with pytest.raises(ValueError, match="word: name the object"):
        node("CrossImageSelfSegmentation").execute(model, clip, inversion, "a photo", " ", 0.5, 5, 1.4)


def test_odd_latent_on_a_model_whose_finest_attention_is_coarser(node, sd15):
    """A UNet laid out like SDXL (no attention at the finest level: the finest decoder attention
    is at latent/2) on a 9x7 latent: its token grid is 5x4 (the UNet halves sizes rounding up);
    the mask comes back at the image size, 72x56."""
    import tiny_models
    _, clip = sd15
    config = tiny_models.tiny_unet_config()
    config.update(context_dim=768, transformer_depth=[0, 1, 1], transformer_depth_output=[0, 0, 1, 1, 1, 1])
    model = tiny_models.random_model(config, seed=3)
    lat = {"samples": torch.randn(1, 4, 9, 7, generator=torch.Generator().manual_seed(1))}
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of an animal"))
    inversion, _ = node("CrossImageInvertDDIM").execute(model, lat, cond, 3, "normal", 1.0)
    (mask,) = node("CrossImageSelfSegmentation").execute(model, clip, inversion, "a photo of an animal",
                                                         "animal", 0.5, 5, 1.4)
    assert mask.shape == (1, 72, 56) and set(mask.unique().tolist()) <= {0.0, 1.0}


def test_the_papers_clustering_equals_the_official_segmentors_where_pixels_do_cluster(pack):
    """Self-attention rows that fall into groups (five regions of an 8x12 grid, each attending
    mostly within itself, plus noise): Self-Segmentation's clustering and cluster rule at the
    paper's k = 5 and ratio 1.4 give the official segmentor's mask (tests/reference.segment),
    pixel for pixel, for a noun that looks at one region and for one that looks at another."""
    from reference import segment
    core = pack.core.segmentation
    g = torch.Generator().manual_seed(0)
    regions = torch.zeros(8, 12, dtype=torch.long)
    regions[:, 6:], regions[4:, :4], regions[5:, 8:], regions[:3, 2:5] = 1, 2, 3, 4
    labels = regions.flatten()
    logits = 3.0 * (labels[:, None] == labels[None]).float() + 0.5 * torch.randn(96, 96, generator=g)
    self_attention = logits.softmax(dim=-1)
    coarse = torch.nn.functional.avg_pool2d(torch.stack([(regions == r).float() for r in range(5)])[None], 2)[0]
    cross = torch.cat([coarse, 0.2 * torch.rand(3, 4, 6, generator=g)]).flatten(1).T.softmax(dim=-1)  # (24, 8)
    masks = []
    for token in (1, 2):
        word = core.upsample(cross[:, token].reshape(4, 6), 2, (8, 12))
        ours = core.self_segmentation(self_attention, word, 5, 1.4)
        official = segment(self_attention, cross, (8, 12), token, 5, 1.4)
        assert torch.equal(ours.reshape(8, 12).bool(), official)
        masks.append(official)
    for mask, region in zip(masks, (1, 2)):  # whole regions, the noun's among them, not all of them
        kept = {int(r) for r in regions[mask].unique()}
        assert region in kept and len(kept) < 5 and torch.equal(mask, torch.isin(regions, torch.tensor(sorted(kept))))
    assert not torch.equal(masks[0], masks[1])
