"""Batched augmentations on the training device: geometry, colour, blur and ClassMix.

Each function takes a batch and a ``torch.Generator`` and draws one random choice per
image, so a whole batch is augmented in a handful of tensor ops. Geometry moves the
image, its labels and the pseudo-label confidences together; pixels that come from
outside the image get the ignore label and zero confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.data import IGNORE_INDEX


@dataclass(frozen=True)
class AugmentParams:
    """Strength of one augmentation pipeline (weak for labeled images, strong for unlabeled views)."""

    geometry_prob: float    # probability of a random zoom + shift
    scale_min: float
    scale_max: float
    shift: float            # largest shift, as a fraction of the image side
    hflip: bool             # mirror half the images (off for digits: a mirrored digit is another shape)
    jitter_prob: float      # probability of colour jitter
    jitter: float           # strength of brightness, contrast, saturation and hue changes
    blur_prob: float        # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    official_jitter: bool = False  # saturation by up to jitter/2, hue by up to jitter/3 of a turn


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _coin(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def geometry(images: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor | None,
             params: AugmentParams, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random zoom, shift and (optionally) mirror, the same for image, labels and confidence."""
    n, device = len(images), images.device
    apply = _coin(n, params.geometry_prob, generator, device)
    scale = torch.where(apply, _uniform(n, params.scale_min, params.scale_max, generator, device),
                        torch.ones(n, device=device))
    shift = torch.where(apply[:, None], _uniform(2 * n, -params.shift, params.shift, generator, device).view(n, 2),
                        torch.zeros(n, 2, device=device))
    flip = _coin(n, 0.5, generator, device) if params.hflip else torch.zeros(n, dtype=torch.bool, device=device)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = 2 * shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    inside = F.grid_sample(torch.ones_like(labels[:, None], dtype=images.dtype), grid, mode="nearest",
                           align_corners=False)[:, 0] > 0.5
    moved = F.grid_sample(labels[:, None].to(images.dtype), grid, mode="nearest", align_corners=False)[:, 0]
    labels = torch.where(inside, moved.round().long(), IGNORE_INDEX)
    if confidence is not None:
        confidence = F.grid_sample(confidence[:, None], grid, mode="nearest", align_corners=False)[:, 0] * inside
    return images, labels, confidence


def colour_jitter(images: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue, each by up to ``jitter``, on a random subset.

    Brightness and contrast scale by up to 1 +- s, saturation too, and the hue turns by up to
    s half-turns. ``official_jitter``: the official code's kornia ColorJitter(s, s, s/2, s/3),
    saturation by up to 1 +- s/2 and hue by up to s/3 of a turn (2s/3 half-turns).
    """
    n, device, s = len(images), images.device, params.jitter
    saturation_span, hue_half_turns = (s / 2, 2 * s / 3) if params.official_jitter else (s, s)
    apply = _coin(n, params.jitter_prob, generator, device)[:, None, None, None]
    brightness = _uniform(n, 1 - s, 1 + s, generator, device)[:, None, None, None]
    contrast = _uniform(n, 1 - s, 1 + s, generator, device)[:, None, None, None]
    saturation = _uniform(n, 1 - saturation_span, 1 + saturation_span, generator, device)[:, None, None, None]
    # radians of rotation in the YIQ chroma plane
    hue = _uniform(n, -hue_half_turns, hue_half_turns, generator, device) * math.pi
    out = images * brightness
    grey = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2])[:, None]
    out = (out - grey.mean(dim=(2, 3), keepdim=True)) * contrast + grey.mean(dim=(2, 3), keepdim=True)
    grey = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2])[:, None]
    out = grey + (out - grey) * saturation
    out = _rotate_hue(out, hue)
    return torch.where(apply, out.clamp(0, 1), images)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    to_yiq = _RGB_TO_YIQ.to(images)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(images), 3, 3, device=images.device, dtype=images.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # [n,3,3]
    return torch.einsum("nij,njhw->nihw", matrix, images)


def gaussian_blur(images: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Blur a random subset, each image with its own sigma, in one grouped convolution."""
    n, c, h, w = images.shape
    device = images.device
    apply = _coin(n, params.blur_prob, generator, device)
    sigma = _uniform(n, *params.blur_sigma, generator, device)
    radius = max(1, min(h, w) // 16)
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=images.dtype)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [n, k]
    kernel = kernel.repeat_interleave(c, dim=0)         # one kernel per image channel
    flat = images.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    blurred = flat.view(n, c, h, w)
    return torch.where(apply[:, None, None, None], blurred, images)


def classmix_masks(labels: torch.Tensor, num_classes: int, apply: torch.Tensor, generator: torch.Generator,
                   skip_background: bool, official_count: bool = False) -> torch.Tensor:
    """Per image, a mask of the pixels of a random half of the classes present in its labels.

    ClassMix (Olsson et al., WACV 2021) pastes those pixels onto another image. Half of n
    classes is ceil(n/2); the official code of Alonso et al. takes floor(n/2)+1. With
    ``skip_background``, class 0 is never chosen unless it is the only class. Images with
    ``apply`` False get an all-True mask (they stay as they are).
    """
    n, device = len(labels), labels.device
    valid = labels != IGNORE_INDEX
    onehot_index = torch.where(valid, labels, num_classes)  # ignore -> an extra column
    present = torch.zeros(n, num_classes + 1, dtype=torch.bool, device=device)
    present.scatter_(1, onehot_index.view(n, -1), True)
    present = present[:, :num_classes]
    if skip_background:
        others = present[:, 1:].any(dim=1)
        present[:, 0] &= ~others
    count = present.sum(dim=1)
    take = count // 2 + 1 if official_count else (count + 1) // 2
    take = torch.minimum(take, count)
    # Random ranks among the present classes: absent ones are pushed to the end.
    score = torch.rand(n, num_classes, generator=generator, device=device).masked_fill(~present, 2.0)
    rank = score.argsort(dim=1).argsort(dim=1)
    chosen = present & (rank < take[:, None])
    chosen = torch.cat([chosen, torch.zeros(n, 1, dtype=torch.bool, device=device)], dim=1)
    mask = torch.gather(chosen, 1, onehot_index.view(n, -1)).view_as(labels)
    return mask | ~apply[:, None, None]


def classmix(mask: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Image i keeps its masked pixels and takes the rest from image i+1 (cyclically)."""
    out = []
    for t in tensors:
        partner = torch.roll(t, shifts=-1, dims=0)
        m = mask if t.dim() == mask.dim() else mask[:, None]
        out.append(torch.where(m, t, partner))
    return out
