"""The digits stand-in for ImageNet weights: the backbone pretrained as a digit classifier.

From scratch, with a few labeled scenes, the segmentation net never learns digit
identities (../shared/FINDINGS.md). The paper starts from ImageNet or COCO weights;
here the backbone first learns to classify single digits drawn from its own pool of
source digits (disjoint from train, val and test). It runs once and is cached on disk,
keyed by everything that changes the weights.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.cache import cache_key, cached_tensors
from trainer.data import DATA_SEED
from trainer.data.digits import load_pools, make_crops
from trainer.models import normalise
from trainer.models.backbones import SmallBackbone

CROP_SIZE = 32
BATCH = 64
LR = 2e-3
RECIPE_VERSION = 1  # bump when the recipe changes, so old caches are not reused


def cache_name(network: str, steps: int, seed: int) -> str:
    key = cache_key(network=network, steps=steps, seed=seed, crop=CROP_SIZE, batch=BATCH, lr=LR,
                    version=RECIPE_VERSION, data_seed=DATA_SEED)
    return f"digits-{network}-{steps}steps-{key}.pt"


def pretrained_backbone(network: str, steps: int, seed: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """The backbone state dict after ``steps`` steps of digit classification, from the cache if there."""
    if network != "small":
        raise ValueError(f"digit pretraining is built for network 'small', not {network!r}; "
                         "give pretrained=PATH with ImageNet weights for the ResNets")
    return cached_tensors(cache_name(network, steps, seed), lambda: train_classifier(steps, seed, progress)[0])


def train_classifier(steps: int, seed: int = 0, progress: Callable[[int, int], None] | None = None
                     ) -> tuple[dict[str, torch.Tensor], float]:
    """Train backbone + linear classifier on single-digit crops; return (backbone state, held-out accuracy)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pools = load_pools(DATA_SEED)
    backbone = SmallBackbone()
    classifier = nn.Linear(backbone.out_channels, 10)
    model = nn.ModuleDict({"backbone": backbone, "classifier": classifier})
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    def logits(images: torch.Tensor) -> torch.Tensor:
        return classifier(backbone(normalise(images))[1].mean(dim=(2, 3)))

    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = LR * (1 - step / steps) ** 0.9
        images, digits = make_crops(pools["pretrain"], BATCH, CROP_SIZE, rng)
        loss = F.cross_entropy(logits(images), digits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, steps)
    model.eval()
    with torch.no_grad():
        images, digits = make_crops(pools["val"], 512, CROP_SIZE, np.random.default_rng(seed + 1))
        accuracy = float((logits(images).argmax(dim=1) == digits).float().mean())
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}, accuracy
