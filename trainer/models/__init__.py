"""The segmentation network of the method: backbone, segmentation head, contrastive heads, selectors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainer.config import ConfigError, TrainConfig
from trainer.fast_path import FastPath, choose_fast_path
from trainer.models.backbones import SmallBackbone, resnet50, resnet101
from trainer.models.heads import ASPPSum, DeepLabV3PlusHead, mlp_head
from trainer.models.selectors import ClassSelectors


# ImageNet statistics: what ResNet checkpoints expect; for digits they are just a fixed scaling.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the network's input scale."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device, dtype=images.dtype)[:, None, None]
    std = torch.tensor(IMAGE_STD, device=images.device, dtype=images.dtype)[:, None, None]
    return (images - mean) / std


class SegmentationNet(nn.Module):
    """``forward`` takes images in [0, 1] and gives class logits and backbone features, both at the backbone's stride.

    The contrastive part works on pixel vectors: ``project`` (backbone features -> the
    space of the memory bank) and ``predict`` (the student's extra head on top), and the
    per-class ``feature_selectors`` / ``memory_selectors`` that weight them.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, proj_dim: int,
                 amp: bool = False, channels_last: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.amp, self.channels_last = amp, channels_last
        self.backbone = backbone
        self.head = head
        self.projection_head = mlp_head(backbone.out_channels, proj_dim)
        self.prediction_head = mlp_head(proj_dim, proj_dim)
        # On the bf16 fast path the selectors' first-layer products take bf16 inputs too (their
        # statistics and the rest stay float32): at VOC scale those products are most of the term.
        products = torch.bfloat16 if amp else None
        self.feature_selectors = ClassSelectors(num_classes, proj_dim, product_dtype=products)
        self.memory_selectors = ClassSelectors(num_classes, proj_dim, product_dtype=products)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = normalise(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # bf16 autocast over the convolutions only: the losses and the bank stay in float32, where
        # the closed-form contrastive loss and the EMA need the precision (the selectors choose theirs).
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.amp):
            low, features = self.backbone(images)
            logits = self.head(low, features)
        return logits.float(), features.float()

    def project(self, pixel_features: torch.Tensor) -> torch.Tensor:
        return self.projection_head(pixel_features)

    def predict(self, projected: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(projected)


def build_model(cfg: TrainConfig, num_classes: int, fast_path: FastPath | None = None) -> SegmentationNet:
    """The network ``cfg.network`` with ``cfg.pretrained`` weights loaded into its backbone, on
    ``fast_path`` (default: the config's switches resolved for the CPU)."""
    fast_path = fast_path or choose_fast_path(cfg.amp, cfg.channels_last, torch.device("cpu"))
    if cfg.network == "small":
        backbone: nn.Module = SmallBackbone()
        head: nn.Module = ASPPSum(backbone.out_channels, num_classes, cfg.aspp_dilations, cfg.official_aspp)
    elif cfg.network == "deeplabv2_r101":
        backbone = resnet101(dilate=(True, True), official_dilation=cfg.official_dilation)
        head = ASPPSum(backbone.out_channels, num_classes, cfg.aspp_dilations, cfg.official_aspp)
    elif cfg.network == "deeplabv3plus_r50":
        backbone = resnet50(dilate=(False, True), official_dilation=cfg.official_dilation)
        head = DeepLabV3PlusHead(backbone.out_channels, backbone.low_channels, num_classes, cfg.aspp_dilations)
    else:  # validate() already refuses this; kept for callers that skip it
        raise ConfigError(f"network = {cfg.network!r} is unknown")
    model = SegmentationNet(backbone, head, num_classes, cfg.proj_dim, fast_path.bf16, fast_path.channels_last)
    if cfg.pretrained not in ("auto", "none"):
        load_backbone(model.backbone, Path(cfg.pretrained))
    if fast_path.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def load_backbone(backbone: nn.Module, path: Path) -> None:
    """Load a torchvision-format state dict (an ImageNet checkpoint, say) into a backbone.

    Keys the backbone lacks (``fc.*``) are ignored; a key it needs that the file lacks, or a
    shape that differs, is an error naming them.
    """
    if not path.is_file():
        raise ConfigError(f"pretrained = {str(path)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: say which
        raise ConfigError(f"pretrained = {str(path)!r} is not a readable torch state dict: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"pretrained = {str(path)!r} holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    own = backbone.state_dict()
    # torchvision's ImageNet files predate batch norm's num_batches_tracked buffer.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = sorted(k for k in own if k not in state)
    mismatched = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} keys of another shape (first: {k} is {tuple(state[k].shape)}, "
                         f"expected {tuple(own[k].shape)})")
        raise ConfigError(f"pretrained = {str(path)!r} does not fit network: " + "; ".join(parts))
    backbone.load_state_dict({k: state[k] for k in own})
