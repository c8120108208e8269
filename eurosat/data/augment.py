"""Label-preserving augmentation for overhead imagery, on decoded uint8 batches, in torch.

A Sentinel-2 chip seen from above has no "up": a forest, a river or a highway is the same class
flipped or turned by 90 degrees. `dihedral` draws one of the 8 symmetries of the square (4
rotations, each optionally mirrored) per image. It runs on the batch's device, before
normalisation, on training batches only; the draw comes from the caller's seeded generator, so a
client's round is reproducible.
"""

from __future__ import annotations

import torch

AUGMENTATIONS = ("none", "dihedral")


def dihedral(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each NCHW image turned by a random multiple of 90 degrees, mirrored or not (8 symmetries)."""
    choice = torch.randint(0, 8, (images.shape[0],), generator=generator, device=generator.device)
    choice = choice.to(images.device)
    out = torch.empty_like(images)
    for k in range(8):
        idx = (choice == k).nonzero().flatten()
        if idx.numel():
            picked = images.index_select(0, idx)
            picked = picked.flip(3) if k >= 4 else picked
            out.index_copy_(0, idx, torch.rot90(picked, k % 4, (2, 3)))
    return out


def augmenter(name: str):
    """The augmentation function for a run-config value, or None for `none`."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment: unknown value {name!r}; allowed: {', '.join(AUGMENTATIONS)}")
    return dihedral if name == "dihedral" else None
