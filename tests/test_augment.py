"""Augmentations move image and labels together; ClassMix masks and mixes as specified."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from trainer.data import IGNORE_INDEX, augment
from trainer.data.augment import AugmentParams, classmix, classmix_masks, colour_jitter, gaussian_blur, geometry

STRONG = AugmentParams(geometry_prob=1.0, scale_min=0.7, scale_max=1.6, shift=0.2, hflip=True,
                       jitter_prob=1.0, jitter=0.25, blur_prob=1.0)


def _blocks(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose first channel encodes the label of 8x8 blocks: label = round(10 * red)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 10, (n, size // 8, size // 8), generator=g)
    labels = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = torch.stack([labels / 10.0, torch.rand(n, size, size, generator=g), torch.zeros(n, size, size)], 1)
    return images.float(), labels


def test_geometry_keeps_image_and_label_aligned():
    images, labels = _blocks()
    confidence = torch.full(labels.shape, 0.9)
    out_images, out_labels, out_conf = geometry(images, labels, confidence, STRONG, torch.Generator().manual_seed(1))
    assert out_labels.shape == labels.shape and out_images.shape == images.shape
    assert not torch.equal(out_labels, labels)  # something moved
    valid = out_labels != IGNORE_INDEX
    # Away from block borders (3x3 neighbourhood of one label) the image must decode to the label exactly.
    as_float = out_labels[:, None].float()
    flat = (F.max_pool2d(as_float, 3, 1, 1) == -F.max_pool2d(-as_float, 3, 1, 1))[:, 0] & valid
    decoded = (out_images[:, 0] * 10).round().long()
    assert flat.sum() > 0.3 * labels.numel()
    assert torch.equal(decoded[flat], out_labels[flat])
    assert torch.all(out_conf[~valid] == 0) and torch.allclose(out_conf[valid], torch.tensor(0.9))


def test_geometry_without_flip_never_mirrors():
    images, labels = _blocks()
    params = AugmentParams(1.0, 1.0, 1.0, 0.0, False, 0.0, 0.0, 0.0)
    _, out_labels, _ = geometry(images, labels, None, params, torch.Generator().manual_seed(0))
    assert torch.equal(out_labels, labels)


def test_colour_and_blur_keep_range_and_shape():
    images, _ = _blocks()
    g = torch.Generator().manual_seed(0)
    out = gaussian_blur(colour_jitter(images, STRONG, g), STRONG, g)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images)


def test_classmix_mask_takes_half_the_present_classes_and_never_background():
    labels = torch.tensor([[[0, 1, 2, 3, 4, 255]], [[0, 0, 5, 5, 0, 0]]])  # image 0: 4 digits, image 1: one
    apply = torch.tensor([True, True])
    for seed in range(10):
        mask = classmix_masks(labels, 11, apply, torch.Generator().manual_seed(seed), skip_background=True)
        chosen0 = set(labels[0][mask[0]].tolist())
        assert len(chosen0) == 2 and 0 not in chosen0 and 255 not in chosen0
        assert set(labels[1][mask[1]].tolist()) == {5}  # ceil(1/2) = 1 class: the digit
    official = classmix_masks(labels, 11, apply, torch.Generator().manual_seed(0), True, official_count=True)
    assert len(set(labels[0][official[0]].tolist())) == 3  # floor(4/2) + 1
    untouched = classmix_masks(labels, 11, torch.tensor([False, True]), torch.Generator(), True)
    assert untouched[0].all()


def test_classmix_pastes_masked_pixels_onto_the_next_image():
    images = torch.arange(3.0)[:, None, None, None].expand(3, 3, 2, 2).clone()
    labels = torch.tensor([[[1, 2], [1, 2]], [[3, 3], [4, 4]], [[5, 6], [6, 6]]])
    mask = torch.tensor([[[True, False], [True, False]], [[True, True], [False, False]], [[False] * 2] * 2])
    mixed_images, mixed_labels = classmix(mask, images, labels)
    assert mixed_labels.tolist() == [[[1, 3], [1, 4]], [[3, 3], [6, 6]], [[1, 2], [1, 2]]]
    assert mixed_images[0, 0].tolist() == [[0, 1], [0, 1]]
    assert mixed_images[2, 0].tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("official, saturation, hue", [(False, 0.25, 0.25 * math.pi),
                                                        (True, 0.125, 2 * math.pi * 0.25 / 3)])
def test_colour_jitter_ranges(monkeypatch, official, saturation, hue):
    # Brightness, contrast, saturation, hue: the ranges drawn from, the hue in radians.
    drawn = []

    def uniform(n, low, high, generator, device):
        drawn.append((low, high))
        return torch.full((n,), float(high))

    monkeypatch.setattr(augment, "_uniform", uniform)
    colour_jitter(torch.rand(2, 3, 8, 8), dataclasses.replace(STRONG, official_jitter=official),
                  torch.Generator().manual_seed(0))
    (b_low, b_high), (c_low, c_high), (s_low, s_high), (h_low, h_high) = drawn
    assert (b_low, b_high) == (c_low, c_high) == pytest.approx((0.75, 1.25))
    assert (s_low, s_high) == pytest.approx((1 - saturation, 1 + saturation))
    assert (h_low * math.pi, h_high * math.pi) == pytest.approx((-hue, hue))
