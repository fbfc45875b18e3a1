"""AdaIN (Image): colour statistics of a decoded image matched to a reference."""
import pytest
import torch



def test_adain_image_node(node):
    g = torch.Generator().manual_seed(0)
    image = 0.5 + 0.05 * torch.randn(2, 16, 12, 3, generator=g)
    reference = 0.4 + 0.1 * torch.randn(1, 20, 10, 3, generator=g)
    (out,) = node("CrossImageAdaINImage").execute(image, reference)
    assert out.shape == image.shape
    assert torch.allclose(out.mean(dim=(1, 2)), reference.mean(dim=(1, 2)).expand(2, 3), atol=1e-4)
    assert torch.allclose(out.std(dim=(1, 2)), reference.std(dim=(1, 2)).expand(2, 3), atol=1e-3)
    mask = torch.zeros(2, 16, 12)
    mask[:, :8] = 1
    (masked,) = node("CrossImageAdaINImage").execute(image, reference, image_mask=mask)
    assert torch.equal(masked[:, 8:], image[:, 8:])
    assert torch.allclose(masked[:, :8].mean(dim=(1, 2)), reference.mean(dim=(1, 2)).expand(2, 3), atol=1e-4)
    with pytest.raises(ValueError, match="image_mask"):
        node("CrossImageAdaINImage").execute(image, reference, image_mask=torch.zeros(2, 16, 12))
    with pytest.raises(ValueError, match="reference_mask: mask of shape"):
        node("CrossImageAdaINImage").execute(image, reference, reference_mask=torch.ones(16, 12))
    with pytest.raises(ValueError, match="reference: batch of 3"):
        node("CrossImageAdaINImage").execute(image, reference.expand(3, -1, -1, -1))
