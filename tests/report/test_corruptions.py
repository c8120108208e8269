"""Corruptions of real chips: documented strength, shape/dtype/labels kept, seeded."""

import math

import pytest
import torch
import torch.nn.functional as F

from eurosat.report.corruptions import CORRUPTIONS, SEVERITIES, corrupt, parse_corruptions, parse_severities
from eurosat.data.loading import load_split, resolve_source


@pytest.fixture(scope="module")
def chips(small_data):
    return load_split(resolve_source(str(small_data)), "test").take(64)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.float() - b.float()) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_worsens_with_severity_and_is_seeded(name, chips):
    images = chips.images
    out = {s: corrupt(images, name, s, seed=1) for s in SEVERITIES}
    for s, x in out.items():
        assert x.shape == images.shape and x.dtype == torch.uint8
        assert torch.equal(x, corrupt(images, name, s, seed=1)), "same seed, same images"
    quality = [psnr(images, out[s]) for s in SEVERITIES]
    assert all(q < math.inf for q in quality), quality  # every severity changes the images
    assert all(a > b for a, b in zip(quality, quality[1:])), (name, quality)  # and each more than the last
    assert len(CORRUPTIONS[name].levels) == 5


def test_random_corruptions_depend_on_the_seed(chips):
    for name in ("gaussian_noise", "cloud"):
        assert not torch.equal(corrupt(chips.images, name, 3, seed=1), corrupt(chips.images, name, 3, seed=2))


def test_documented_amounts(chips):
    x = chips.images.float() / 255
    noisy = corrupt(chips.images, "gaussian_noise", 2).float() / 255  # sigma 0.08 (clipping makes it a bit less)
    assert 0.06 < (noisy - x).std().item() < 0.085
    bright = corrupt(chips.images, "brightness", 1).float() / 255  # +0.1 wherever no clipping happens
    room = x < 0.85
    assert (bright - x)[room].mean().item() == pytest.approx(0.1, abs=0.003)
    low = corrupt(chips.images, "contrast", 5).float()  # factor 0.2: spread around each image's mean shrinks 5x
    ratio = (low.std(dim=(1, 2, 3)) / chips.images.float().std(dim=(1, 2, 3))).mean().item()
    assert ratio == pytest.approx(0.2, abs=0.02)
    cloudy = corrupt(chips.images, "cloud", 5)  # cover 0.6: about 60% of pixels changed
    changed = (cloudy != chips.images).any(dim=1).float().mean().item()
    assert 0.5 < changed < 0.75


def test_parsing_names_and_severities():
    assert parse_corruptions("all") == tuple(CORRUPTIONS)
    assert parse_corruptions("jpeg, blur") == ("jpeg", "blur")
    assert parse_severities("1..5") == (1, 2, 3, 4, 5) and parse_severities("5,1,5") == (1, 5)
    for bad in ("0", "6", "1..9", "x", ""):
        with pytest.raises(ValueError, match="--severity"):
            parse_severities(bad)
    with pytest.raises(ValueError, match="allowed: gaussian_noise"):
        parse_corruptions("rain")


@pytest.mark.parametrize("severity", SEVERITIES)
def test_blur_is_the_documented_gaussian_with_reflected_edges(chips, severity):
    """Reference: a separable depthwise convolution over a reflect-padded image, rounded to uint8."""
    sigma = CORRUPTIONS["blur"].levels[severity - 1]
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = (k / k.sum()).repeat(3, 1, 1, 1)
    x = chips.images.float() / 255
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(3, 1, 1, -1), groups=3)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(3, 1, -1, 1), groups=3)
    expected = (x * 255).round().clamp(0, 255).to(torch.uint8)
    diff = (corrupt(chips.images, "blur", severity).int() - expected.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # summation order only, at .5 boundaries
