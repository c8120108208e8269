"""Degraded imagery: seeded corruptions of uint8 NCHW chips at five severities each.

Satellite chips reach users degraded: sensor noise, aggressive JPEG in the downlink, haze, low
contrast, blur, cloud. Each corruption is one function of (images, level, generator) and one row
of levels, severity 1 (mild) to 5 (severe), in the spirit of ImageNet-C; pixel values are in
[0, 1] in the formulas below, and results are rounded back to uint8:

| name | parameter | severity 1..5 | what it does |
|---|---|---|---|
| gaussian_noise | sigma | 0.04 0.08 0.12 0.18 0.26 | x + N(0, sigma^2) per pixel and channel |
| jpeg | quality | 60 40 25 15 8 | re-encoded as JPEG at that quality (PIL) |
| contrast | factor | 0.75 0.6 0.45 0.3 0.2 | mean + factor x (x - mean), per image |
| brightness | delta | 0.1 0.2 0.3 0.4 0.5 | x + delta |
| haze | density | 0.15 0.3 0.45 0.6 0.75 | (1 - density) x + density x 0.8 (grey-white airlight) |
| blur | sigma_px | 0.5 1.0 1.5 2.0 3.0 | Gaussian blur, sigma in pixels |
| cloud | cover | 0.1 0.2 0.3 0.45 0.6 | that fraction of each chip under smooth random cloud |
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Corruption:
    name: str
    parameter: str
    levels: tuple[float, ...]  # severity 1..5
    apply: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]  # float images in [0, 1]


def _noise(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=g)


def _contrast(x: torch.Tensor, factor: float, _g: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (x - mean)


def _brightness(x: torch.Tensor, delta: float, _g: torch.Generator) -> torch.Tensor:
    return x + delta


def _haze(x: torch.Tensor, density: float, _g: torch.Generator) -> torch.Tensor:
    return (1 - density) * x + density * 0.8


@functools.lru_cache(maxsize=16)
def _blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """The n x n matrix of a 1-D Gaussian blur with reflected edges (as `F.pad(mode="reflect")`):
    blurring along an axis is one matrix product, much faster on a CPU than a depthwise convolution.
    Cached (one per chip side and severity) and never written to: callers only multiply by it."""
    radius = min(max(1, int(3 * sigma + 0.5)), n - 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    m = torch.zeros(n, n, dtype=torch.float64)
    for j in range(n):
        for offset, weight in zip(range(-radius, radius + 1), k.tolist()):
            i = abs(j + offset)  # reflect at the first pixel ...
            i = 2 * (n - 1) - i if i > n - 1 else i  # ... and at the last
            m[j, i] += weight
    return m.float()


def _blur(x: torch.Tensor, sigma: float, _g: torch.Generator) -> torch.Tensor:
    _, _, h, w = x.shape
    return _blur_matrix(h, sigma) @ (x @ _blur_matrix(w, sigma).T)


def _cloud(x: torch.Tensor, cover: float, g: torch.Generator) -> torch.Tensor:
    """Smooth random field (8x8 noise, bicubic up), thresholded per image at its `cover` quantile,
    with soft edges: cloud is white at its core."""
    n, _, h, w = x.shape
    field = F.interpolate(torch.rand((n, 1, 8, 8), generator=g), size=(h, w), mode="bicubic", align_corners=False)
    threshold = torch.quantile(field.flatten(1), 1 - cover, dim=1).view(n, 1, 1, 1)
    opacity = ((field - threshold) / 0.08).clamp(0, 1)
    return (1 - opacity) * x + opacity * 0.95


def _jpeg(x: torch.Tensor, quality: float, _g: torch.Generator) -> torch.Tensor:
    from PIL import Image

    out = np.empty((x.shape[0], x.shape[2], x.shape[3], 3), dtype=np.uint8)
    pixels = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(pixels):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian_noise", "sigma", (0.04, 0.08, 0.12, 0.18, 0.26), _noise),
    Corruption("jpeg", "quality", (60, 40, 25, 15, 8), _jpeg),
    Corruption("contrast", "factor", (0.75, 0.6, 0.45, 0.3, 0.2), _contrast),
    Corruption("brightness", "delta", (0.1, 0.2, 0.3, 0.4, 0.5), _brightness),
    Corruption("haze", "density", (0.15, 0.3, 0.45, 0.6, 0.75), _haze),
    Corruption("blur", "sigma_px", (0.5, 1.0, 1.5, 2.0, 3.0), _blur),
    Corruption("cloud", "cover", (0.1, 0.2, 0.3, 0.45, 0.6), _cloud),
)}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """`images` (uint8 NCHW, CPU) under corruption `name` at `severity` (1-5); same seed, same result."""
    spec = CORRUPTIONS[name]
    generator = torch.Generator().manual_seed(seed * 1000 + list(CORRUPTIONS).index(name) * 10 + severity)
    x = spec.apply(images.float() / 255, spec.levels[severity - 1], generator)  # a copy: never the caller's tensor
    return x.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def parse_corruptions(text: str) -> tuple[str, ...]:
    """`a,b,c` or `all`; unknown names are a one-line ValueError naming the allowed ones."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("all",):
        return tuple(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(f"--corruptions: unknown {', '.join(unknown) or '(empty)'}; "
                         f"allowed: {', '.join(CORRUPTIONS)} (or all)")
    return names


def parse_severities(text: str) -> tuple[int, ...]:
    """`3`, `1,3,5` or a range `1..5`; anything outside 1-5 is a one-line ValueError."""
    try:
        if ".." in text:
            lo, hi = (int(p) for p in text.split(".."))
            values = tuple(range(lo, hi + 1))
        else:
            values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        values = ()
    if not values or any(v not in SEVERITIES for v in values):
        raise ValueError(f"--severity: expected severities from 1 to 5 as N, N,M or N..M, got {text!r}")
    return tuple(sorted(set(values)))
