"""One semi-supervised training run of Alonso et al. (ICCV 2021), step by step.

``Trainer.train_step`` reads like the method section of the paper:

1. labeled images, weakly augmented -> supervised cross-entropy;
2. unlabeled images -> the mean teacher's pseudo-labels and confidences -> two strongly
   augmented views (ClassMix after the ramp-up) -> pixel-weighted pseudo-label
   cross-entropy and an entropy term;
3. the teacher's projections of labeled pixels it gets right with confidence -> the
   class-wise memory bank;
4. the student's labeled and unlabeled pixel vectors -> contrastive loss against the bank;
5. SGD with poly learning rate, then the teacher follows the student (EMA).

``fit(cfg)`` is the one driver of a run: it runs the steps, evaluates every ``eval_every``
iterations, hands each evaluation to a callback, and can write a run folder, show progress
and score the test split at the end. Nothing here knows of Ray or Optuna.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from trainer import losses
from trainer.atomic import atomic_write
from trainer.cache import inductor_cache_dir
from trainer.class_counts import WindowedClassCounts, epoch_steps
from trainer.config import ConfigError, TrainConfig, first_line
from trainer.contrastive_term import build_term
from trainer.data import IGNORE_INDEX, SegmentationData, build_data
from trainer.data.augment import (AugmentParams, classmix, classmix_masks, colour_jitter, gaussian_blur,
                                  geometry)
from trainer.evaluation import LOSS_PARTS, Evaluation
from trainer.fast_path import FastPath, choose_fast_path
from trainer.memory_bank import ClassMemoryBank, bank_candidates, per_image_quota
from trainer.metrics import confusion_matrix, iou_per_class, mean_iou
from trainer.models import SegmentationNet, build_model
from trainer.models.backbones import freeze_batch_norm_affine
from trainer.progress import ProgressBars
from trainer.reload_best import BestCheckpoint
from trainer.teacher import ema_momentum, update_teacher

CHECKPOINT_VERSION = 1


class CheckpointError(ConfigError):
    """A checkpoint that this trainer cannot continue from: unreadable, unsafe, or another model's."""


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: the config diverged."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device = {name!r} but torch sees no CUDA device; use device=cpu or auto")
    return device


class Trainer:
    def __init__(self, cfg: TrainConfig, data: SegmentationData | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.data = data if data is not None else build_data(cfg)
        self.num_classes = self.data.num_classes
        self.fast_path = choose_fast_path(cfg.amp, cfg.channels_last, self.device)
        self.student: SegmentationNet = build_model(cfg, self.num_classes, self.fast_path)
        if cfg.dataset == "digits" and cfg.pretrained == "auto" and cfg.network == "small":
            from trainer.pretrain import pretrained_backbone
            report = (lambda done, total: progress("pretrain", done, total)) if progress else None
            self.student.backbone.load_state_dict(pretrained_backbone(cfg.network, cfg.pretrain_steps, progress=report))
        self.student.to(self.device).train()
        if cfg.freeze_backbone_bn:
            freeze_batch_norm_affine(self.student.backbone)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if cfg.compile:  # in place: parameter names, and so checkpoints, stay those of eager runs
            # One Inductor cache per host, beside the project's other caches: every trial and run
            # on a node after the first loads the compiled kernels instead of compiling them again
            # (a tiny trial on this CPU: 25 s the first time, 5 s after). A folder already set stands:
            # the user's, or torch's own default in a process that compiled something before.
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
            self.student.compile()
            self.teacher.compile()
        self.contrastive_term = build_term(cfg.compile)  # both selectors and the loss, compiled as one
        # Frozen parameters stay out of the optimiser, so weight decay does not shrink them either.
        self.optimizer = torch.optim.SGD([p for p in self.student.parameters() if p.requires_grad], lr=cfg.lr,
                                         momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.bank = ClassMemoryBank(self.num_classes, cfg.bank_size, cfg.proj_dim, self.device)
        self.per_image = cfg.bank_per_image or per_image_quota(
            cfg.bank_size, len(self.data.labeled), self.num_classes,
            voc_factor=cfg.bank_selection == "per_batch" and cfg.dataset == "voc")
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        # Real datasets seed each batch from these keys, so worker processes can decode ahead.
        self.labeled_stream = self.data.labeled.stream(cfg.batch_labeled, generator=self.data_generator,
                                                       key=f"{cfg.seed}/labeled")
        self.unlabeled_stream = self.data.unlabeled.stream(cfg.batch_unlabeled // 2, generator=self.data_generator,
                                                           key=f"{cfg.seed}/unlabeled")
        self.aug_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.class_counts = torch.zeros(self.num_classes, dtype=torch.float64, device=self.device)
        self.class_window: WindowedClassCounts | None = None
        if cfg.class_balance == "running" and cfg.official_class_counts:
            self.class_window = WindowedClassCounts(
                self.num_classes, epoch_steps(len(self.data.labeled), cfg.batch_labeled),
                epoch_steps(len(self.data.unlabeled), cfg.batch_unlabeled // 2), self.device)
        self.best: BestCheckpoint | None = (BestCheckpoint(cfg.reload_best_after * cfg.iterations)
                                            if cfg.reload_best_after else None)
        self.iteration = 0
        self.train_seconds = 0.0
        self._loss_sums = torch.zeros(len(LOSS_PARTS), dtype=torch.float64)
        self._loss_steps = 0
        self._images_since_eval = 0
        self._seconds_since_eval = 0.0
        self.weak = AugmentParams(0.5, cfg.aug_scale_min, cfg.aug_scale_max, cfg.aug_shift, cfg.hflip,
                                  jitter_prob=0.2, jitter=0.125, blur_prob=0.0, official_jitter=cfg.official_jitter)
        self.strong = AugmentParams(0.8, cfg.aug_scale_min, cfg.aug_scale_max, cfg.aug_shift, cfg.hflip,
                                    jitter_prob=0.8, jitter=0.25, blur_prob=0.2, official_jitter=cfg.official_jitter)

    # --- the method ---------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg, it = self.cfg, self.iteration
        started = time.perf_counter()
        lr = cfg.lr * max(0.0, 1 - it / cfg.iterations) ** cfg.lr_power
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        after_ramp_up = it >= cfg.ramp_up
        uses_unlabeled = cfg.pseudo_label_weight > 0 or cfg.entropy_weight > 0 or cfg.contrastive_weight_unlabeled > 0
        uses_bank = cfg.contrastive_weight_labeled > 0 or cfg.contrastive_weight_unlabeled > 0
        parts = dict.fromkeys(LOSS_PARTS[:-1], torch.zeros((), device=self.device))

        # 1. Labeled images, weakly augmented.
        images_l, labels_l, loaded_labels_l = self._labeled_batch()

        # 2. Unlabeled images: the teacher's pseudo-labels, then two strong views of each.
        if uses_unlabeled:
            images_u, padding_u = self._on_device(*self.unlabeled_stream.next())
            pseudo, confidence = self._pseudo_labels(images_u, padding_u == IGNORE_INDEX)
            views = [self._strong_view(images_u, pseudo, confidence, mix=after_ramp_up) for _ in range(2)]
            images_v, pseudo_v, confidence_v = (torch.cat(t) for t in zip(*views))

        class_weights = self._class_weights(labels_l, loaded_labels_l, pseudo if uses_unlabeled else None,
                                            after_ramp_up)

        # Student on both batches.
        logits_l, features_l = self.student(images_l)
        parts["supervised"] = losses.supervised_ce(
            _upsample(logits_l, labels_l), labels_l, class_weights if cfg.class_balance_labeled else None)
        if uses_unlabeled:
            logits_v, features_v = self.student(images_v)
            full_logits_v = _upsample(logits_v, pseudo_v)
            ramp = losses.sigmoid_ramp_up(it, cfg.ramp_up)
            pixel_weight = losses.pseudo_label_weights(confidence_v, cfg.pseudo_label_power, ramp)
            parts["pseudo_label"] = self._pseudo_label_ce(full_logits_v, pseudo_v, pixel_weight, class_weights)
            parts["entropy"] = losses.entropy_term(full_logits_v, pseudo_v != IGNORE_INDEX)

        # 3. The teacher fills the memory bank from labeled pixels it predicts right, confidently.
        # Domain adaptation alternates source and target batches; only the target fills the bank.
        from_target = getattr(self.labeled_stream, "last_is_target", True)
        if uses_bank and from_target and it >= cfg.ramp_up - cfg.bank_lead:
            self._update_bank(images_l, labels_l)

        # 4. Contrastive loss of the student's pixel vectors against the bank.
        if uses_bank and after_ramp_up:
            if cfg.contrastive_weight_labeled > 0:
                parts["contrastive_labeled"] = self._contrastive(features_l, labels_l)
            if cfg.contrastive_weight_unlabeled > 0:
                parts["contrastive_unlabeled"] = self._contrastive(features_v, pseudo_v)

        total = (parts["supervised"] + cfg.pseudo_label_weight * parts["pseudo_label"]
                 + cfg.entropy_weight * parts["entropy"]
                 + cfg.contrastive_weight_labeled * parts["contrastive_labeled"]
                 + cfg.contrastive_weight_unlabeled * parts["contrastive_unlabeled"])
        if it == cfg.fault_nan_at:
            total = torch.full_like(total, math.nan)
        if not torch.isfinite(total):
            raise DivergedError(f"loss is {total.item()} at iteration {it} (parts: "
                                + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items()) + ")")

        # 5. SGD step, then the teacher follows the student.
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        update_teacher(self.teacher, self.student, ema_momentum(it, cfg.iterations, cfg.ema_momentum, cfg.official_ema),
                       parameters_only=cfg.official_ema)

        values = torch.stack([*(p.detach().double() for p in parts.values()), total.detach().double()]).cpu()
        self._loss_sums += values
        self._loss_steps += 1
        self.iteration += 1
        elapsed = time.perf_counter() - started
        self.train_seconds += elapsed
        self._seconds_since_eval += elapsed
        self._images_since_eval += cfg.batch_labeled + (cfg.batch_unlabeled if uses_unlabeled else 0)
        return dict(zip(LOSS_PARTS, values.tolist()))

    # --- parts of the step ----------------------------------------------------------------
    def _labeled_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weakly augmented images and labels, and the labels as loaded (what the official code counts)."""
        images, labels = self._on_device(*self.labeled_stream.next())
        loaded = labels
        mix = torch.rand(len(images), generator=self.aug_generator, device=self.device) < self.cfg.labeled_classmix_prob
        mask = classmix_masks(labels, self.num_classes, mix, self.aug_generator, self.data.has_background,
                              self.cfg.official_classmix_count)
        images, labels = classmix(mask, images, labels)
        images, labels, _ = geometry(images, labels, None, self.weak, self.aug_generator)
        images = colour_jitter(images, self.weak, self.aug_generator)
        return images, labels, loaded

    def _on_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the training device: images float in [0, 1], labels long (real datasets
        ship uint8 of both, and pinned memory on CUDA, so the copy overlaps)."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        return images, labels.to(self.device, non_blocking=True).long()

    def _strong_view(self, images: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor, mix: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(images)
        apply = torch.rand(n, generator=self.aug_generator, device=self.device) < (self.cfg.classmix_prob if mix else 0.0)
        mask = classmix_masks(pseudo, self.num_classes, apply, self.aug_generator, self.data.has_background,
                              self.cfg.official_classmix_count)
        images, pseudo, confidence = classmix(mask, images, pseudo, confidence)
        images, pseudo, confidence = geometry(images, pseudo, confidence, self.strong, self.aug_generator)
        images = gaussian_blur(colour_jitter(images, self.strong, self.aug_generator), self.strong, self.aug_generator)
        return images, pseudo, confidence

    @torch.no_grad()
    def _pseudo_labels(self, images: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's classes and confidences; none on the padding of a crop smaller than its image."""
        confidence, pseudo = self._teacher_logits(images).softmax(dim=1).max(dim=1)
        return pseudo.masked_fill(padding, IGNORE_INDEX), confidence.masked_fill(padding, 0.0)

    def _teacher_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.teacher.train(self.cfg.official_teacher_train_mode)
        return self.teacher(images)

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        logits = self._teacher_forward(images)[0]
        return F.interpolate(logits, size=images.shape[2:], mode="bilinear", align_corners=False)

    def _class_weights(self, labels: torch.Tensor, loaded_labels: torch.Tensor, pseudo: torch.Tensor | None,
                       active: bool) -> torch.Tensor | None:
        """The paper's sqrt(median/frequency) class weights, from labeled and pseudo-label counts."""
        if self.cfg.class_balance == "off":
            return None
        if self.class_window is not None:  # official_class_counts: its windows, weights once they are full
            self.class_window.add(loaded_labels, pseudo)
            ready = active and self.class_window.ready
            return losses.median_frequency_weights(self.class_window.counts()) if ready else None
        counts = losses.class_pixel_counts(labels, self.num_classes)
        if pseudo is not None:
            counts = counts + losses.class_pixel_counts(pseudo, self.num_classes)
        if self.cfg.class_balance == "running":
            self.class_counts += counts
            counts = self.class_counts
        return losses.median_frequency_weights(counts) if active else None

    def _pseudo_label_ce(self, logits: torch.Tensor, pseudo: torch.Tensor, pixel_weight: torch.Tensor,
                         class_weights: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.official_class_weighted_mean:
            # The official CrossEntropyLoss2dPixelWiseWeighted: mean(CE * w_class * w_pixel), so
            # the class weights also scale the term as a whole (their mean is not 1).
            return losses.weighted_cross_entropy(logits, pseudo, pixel_weight, class_weights)
        return losses.weighted_cross_entropy(logits, pseudo, _renormalised(pixel_weight, pseudo, class_weights))

    @torch.no_grad()
    def _update_bank(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        logits, features = self._teacher_forward(images)
        if logits.shape[2:] != features.shape[2:]:  # DeepLabv3+: logits at stride 4, features at 16
            logits = F.interpolate(logits, size=features.shape[2:], mode="bilinear", align_corners=False)
        labels_small = _downsample_labels(labels, features.shape[2:])
        good = bank_candidates(logits, labels_small, self.cfg.confidence_threshold, IGNORE_INDEX)
        if not bool(good.any()):
            return
        pixel_features = features.permute(0, 2, 3, 1)[good]
        classes = labels_small[good]
        image_index = torch.arange(len(images), device=self.device)[:, None, None].expand_as(good)[good]
        projected = self.teacher.project(pixel_features)

        def scores(index: torch.Tensor | slice) -> torch.Tensor:  # the bank asks only for candidates that compete
            return self.teacher.feature_selectors.score_pixels(projected, classes[index], index)

        quota = self.per_image
        if self.cfg.bank_selection == "per_batch":
            # The official code ranks each class over the whole batch (one group per class) and
            # keeps B times the per-image quota: one image may give all of a class's vectors.
            image_index, quota = torch.zeros_like(image_index), len(images) * self.per_image
        self.bank.add(projected, classes, image_index, scores, quota, self.cfg.bank_policy, self.aug_generator)

    def _contrastive(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Contrastive loss of the student's pixels (valid labels at feature resolution) against the bank."""
        labels_small = _downsample_labels(labels, features.shape[2:])
        valid = labels_small != IGNORE_INDEX
        classes = labels_small[valid]
        if len(classes) < 2:
            return torch.zeros((), device=self.device)
        z = self.student.predict(self.student.project(features.permute(0, 2, 3, 1)[valid]))
        if self.cfg.contrastive_loss == "infonce":  # every pixel meets every memory vector: cap them
            bank, filled = self.bank.newest(self.cfg.infonce_memory)
        else:
            bank, filled = self.bank.vectors, self.bank.valid()
        return self.contrastive_term(self.student.feature_selectors, self.student.memory_selectors, z, classes,
                                     bank, filled, loss=self.cfg.contrastive_loss, temperature=self.cfg.temperature,
                                     official_memory_weights=self.cfg.official_memory_weights)

    def run(self, on_evaluation: Callable[[Evaluation, "Trainer"], None] | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> Evaluation | None:
        """Train to ``cfg.iterations``, evaluating on val every ``eval_every`` iterations and at
        the end; return the last evaluation (None if there was nothing left to train)."""
        cfg, last = self.cfg, None
        while self.iteration < cfg.iterations:
            self.train_step()
            if progress is not None:
                progress("train", self.iteration, cfg.iterations)
            if self.iteration == cfg.iterations and cfg.bn_reestimate:
                self.reestimate_batch_norm(cfg.bn_reestimate)  # before the last evaluation sees them
            if self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations:
                last = self.evaluation("val")
                if self.best is not None:
                    self._reload_best_on_plateau(last)
                if on_evaluation is not None:  # after a reload: a checkpoint saved now holds its state
                    on_evaluation(last, self)
        self.close()
        return last

    def _reload_best_on_plateau(self, evaluation: Evaluation) -> None:
        """reload_best_after: keep the best evaluated network; when val stalls, it becomes student and
        teacher again (recorded in ``evaluation.reloaded_best``). Not after the last evaluation,
        which must describe the networks the run ends with."""
        evaluated = {"teacher": self.teacher, "student": self.student}[self.cfg.eval_model]
        stalled = self.best.observe(evaluation.miou, self.iteration, evaluated)
        if stalled and self.iteration < self.cfg.iterations:
            self.best.reload_into(self.student, self.teacher, iteration=self.iteration)
            evaluation.reloaded_best = self.best.iteration

    def close(self) -> None:
        """Stop the data streams' worker processes (a later step starts them again)."""
        self.labeled_stream.close()
        self.unlabeled_stream.close()

    @torch.no_grad()
    def reestimate_batch_norm(self, batches: int) -> None:
        """Recompute the evaluated network's batch-norm statistics on unlabeled images.

        An EMA teacher's running statistics average over students long gone; a fresh
        cumulative average over ``batches`` batches matches the weights it evaluates with.
        """
        net = {"teacher": self.teacher, "student": self.student}[self.cfg.eval_model]
        norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative mean over the batches below
        was_training = net.training
        net.train()
        # Its own generator: re-estimating must not shift the training stream of a resumed run.
        generator = torch.Generator().manual_seed(self.cfg.seed + 2)
        stream = self.data.unlabeled.stream(self.cfg.batch_unlabeled, generator=generator, key=f"{self.cfg.seed}/bn")
        for _ in range(batches):
            net(self._on_device(*stream.next())[0])
        stream.close()
        net.train(was_training)
        for m, momentum in zip(norms, saved):
            m.momentum = momentum

    # --- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def _predictions(self, split: str, model: str | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images, labels, predicted classes) of ``split``, batch by batch, from the evaluated network
        (teacher or student, with ``eval_flip``), every labeled pixel at the labels' own resolution."""
        net = {"teacher": self.teacher, "student": self.student}[model or self.cfg.eval_model]
        was_training = net.training
        net.eval()
        try:
            for images, labels in self.data.split(split).batches(self.cfg.eval_batch):
                images, labels = self._on_device(images, labels)
                logits = net(images)[0]
                if self.cfg.eval_flip:
                    logits = logits + net(images.flip(-1))[0].flip(-1)
                yield images, labels, _upsample(logits, labels).argmax(dim=1)
        finally:  # also when a caller stops early (``preview``)
            net.train(was_training)

    def confusion(self, split: str = "val", model: str | None = None) -> torch.Tensor:
        """[C, C] pixel counts on ``split``, rows = true class, columns = predicted (ignored pixels left out)."""
        confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        for _, labels, prediction in self._predictions(split, model):
            confusion += confusion_matrix(prediction, labels, self.num_classes)
        return confusion

    def evaluate(self, split: str = "val", model: str | None = None) -> tuple[float, list[float]]:
        """mIoU and per-class IoU on ``split`` ('val' or 'test') of the teacher or the student."""
        confusion = self.confusion(split, model)
        return mean_iou(confusion), iou_per_class(confusion).tolist()

    def preview(self, count: int, split: str = "val") -> list[Preview]:
        """The first ``count`` images of ``split`` (the same for every run of a dataset) with their labels
        and the evaluated network's prediction: what a researcher looks at first."""
        shown: list[Preview] = []
        if count < 1:
            return shown
        batches = self._predictions(split)
        with contextlib.closing(batches):  # stop reading (and decoding) once enough are in
            for images, labels, prediction in batches:
                for image, label, predicted in zip(images, labels, prediction):
                    shown.append(Preview(len(shown), _as_bytes(image.permute(1, 2, 0)), label.to(torch.uint8).cpu(),
                                         predicted.to(torch.uint8).cpu()))
                    if len(shown) == count:
                        return shown
        return shown

    def evaluation(self, split: str = "val") -> Evaluation:
        """Evaluate and collect the metrics since the previous evaluation."""
        miou, iou = self.evaluate(split)
        steps = max(self._loss_steps, 1)
        result = Evaluation(
            iteration=self.iteration, split=split, miou=miou, iou=iou,
            losses=dict(zip(LOSS_PARTS, (self._loss_sums / steps).tolist())),
            bank_fill=self.bank.fill().tolist(),
            images_per_second=self._images_since_eval / max(self._seconds_since_eval, 1e-9),
            lr=self.optimizer.param_groups[0]["lr"], train_seconds=self.train_seconds,
            test_miou=self.evaluate("test")[0] if self.cfg.eval_test and split == "val" else None)
        self._loss_sums.zero_()
        self._loss_steps = self._images_since_eval = 0
        self._seconds_since_eval = 0.0
        return result

    # --- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-exact resume needs."""
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "iteration": self.iteration,
            "train_seconds": self.train_seconds,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "bank": self.bank.state_dict(),
            "class_counts": self.class_counts.clone(),
            **({"class_window": self.class_window.state_dict()} if self.class_window is not None else {}),
            **({"best": self.best.state_dict()} if self.best is not None else {}),
            "data_generator": self.data_generator.get_state(),
            "aug_generator": self.aug_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "streams": {"labeled": self.labeled_stream.state_dict(), "unlabeled": self.unlabeled_stream.state_dict()},
            "loss_sums": self._loss_sums.clone(),
            "loss_steps": self._loss_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise CheckpointError(f"checkpoint version {version!r} is not {CHECKPOINT_VERSION}: "
                                  "not a checkpoint of this trainer")
        try:
            self.student.load_state_dict(state["student"])
            self.teacher.load_state_dict(state["teacher"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint does not fit this model (network={self.cfg.network}, "
                                  f"classes={self.num_classes}, proj_dim={self.cfg.proj_dim}): "
                                  f"{first_line(err)}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.bank.load_state_dict(state["bank"])
        self.class_counts = state["class_counts"].to(self.device)
        if self.class_window is not None:
            if "class_window" not in state:
                raise CheckpointError("checkpoint holds no official class counts (official_class_counts was off)")
            self.class_window.load_state_dict(state["class_window"])
        if self.best is not None:
            if "best" not in state:
                raise CheckpointError("checkpoint holds no best evaluation (reload_best_after was 0)")
            self.best.load_state_dict(state["best"])
        self.data_generator.set_state(state["data_generator"])
        self.aug_generator.set_state(state["aug_generator"])
        torch.set_rng_state(state["torch_rng"])
        if "streams" in state:  # checkpoints from before streams had a state: digits runs, whose is empty
            self.labeled_stream.load_state_dict(state["streams"]["labeled"])
            self.unlabeled_stream.load_state_dict(state["streams"]["unlabeled"])
        self.iteration = state["iteration"]
        self.train_seconds = state["train_seconds"]
        self._loss_sums = state["loss_sums"].clone()
        self._loss_steps = state["loss_steps"]

    def save(self, path: str | Path) -> None:
        with atomic_write(path) as handle:
            torch.save(self.state_dict(), handle)

    def load(self, path: str | Path) -> None:
        state = _read_checkpoint(path)
        try:
            self.load_state_dict(state)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None


def checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The TrainConfig values a checkpoint of ``Trainer.save`` was written with."""
    state = _read_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}: not a trainer checkpoint (it holds no config)")
    return state["config"]


def _read_checkpoint(path: str | Path) -> Any:
    # On the CPU first: RNG states must be CPU tensors; modules and the bank move themselves.
    # weights_only: a checkpoint is data; a pickle that would run code is refused.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable, foreign or unsafe: the same one line
        raise CheckpointError(f"{path}: not a readable trainer checkpoint ({first_line(err)})") from None


@dataclass
class Preview:
    """One val image as a run sees it, on the CPU: all uint8, at the labels' resolution."""

    index: int                 # its place in the split
    image: torch.Tensor        # [H, W, 3] RGB
    label: torch.Tensor        # [H, W] ground-truth classes, 255 = ignore
    prediction: torch.Tensor   # [H, W] predicted classes


@dataclass
class FitResult:
    """How a run ended: its last val evaluation and, with ``final_test``, its test scores."""

    last: Evaluation
    fast_path: FastPath
    test_miou: float | None = None
    test_iou: list[float] | None = None
    test_confusion: list[list[int]] | None = None  # the test scores follow from it (rows true, columns predicted)
    previews: list[Preview] = field(default_factory=list)  # with ``preview``: the first val images predicted

    # The last evaluation comes after the last step, so it holds the run's final numbers.
    @property
    def val_miou(self) -> float:
        return self.last.miou

    @property
    def iteration(self) -> int:
        return self.last.iteration

    @property
    def train_seconds(self) -> float:
        return self.last.train_seconds

    def final_record(self) -> dict[str, Any]:
        """The last line of a run folder's metrics.jsonl."""
        return {"final": True, "iteration": self.iteration, "val_miou": self.val_miou, "test_miou": self.test_miou,
                "test_iou": self.test_iou, "train_seconds": self.train_seconds,
                "precision": self.fast_path.precision, "channels_last": self.fast_path.channels_last}


def fit(cfg: TrainConfig, data: SegmentationData | None = None, *,
        on_evaluation: Callable[[Evaluation, Trainer], None] | None = None,
        on_diverged: Callable[[DivergedError, Trainer], None] | None = None,
        resume_from: str | Path | None = None, out: str | Path | None = None,
        progress: bool = False, final_test: bool = False, preview: int = 0) -> FitResult:
    """Train ``cfg`` to the end: the one driver of a run (``semiseg-study train``, a Tune trial, a retrain run).

    Evaluates on val every ``eval_every`` iterations and at the end.

    - ``on_evaluation(evaluation, trainer)`` sees each evaluation (and can save the trainer);
      ``on_diverged(error, trainer)`` sees a diverged run before its DivergedError propagates.
    - ``resume_from``: a checkpoint written by ``Trainer.save`` to continue from.
    - ``out``: a folder for config.json, checkpoint.pt (rewritten at each evaluation) and
      metrics.jsonl (``Evaluation.as_dict()`` per evaluation, then ``FitResult.final_record()``;
      a resumed run appends to it).
    - ``progress``: bars for the pretraining and the training, and a line per evaluation.
    - ``final_test``: score the test split at the end (and keep its confusion matrix).
    - ``preview``: predict the first ``preview`` val images at the end (``FitResult.previews``).
    """
    bars = ProgressBars(cfg.iterations) if progress else None
    trainer = Trainer(cfg, data, bars)
    if resume_from is not None:
        trainer.load(resume_from)
    if out is not None:  # only now: a config or a checkpoint that fails leaves no folder behind
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")

    def evaluated(evaluation: Evaluation, trainer: Trainer) -> None:
        if out is not None:
            trainer.save(out / "checkpoint.pt")
            _append_json_line(out / "metrics.jsonl", evaluation.as_dict())
        if bars is not None:
            bars.evaluation(evaluation)
        if on_evaluation is not None:
            on_evaluation(evaluation, trainer)

    try:
        last = trainer.run(evaluated, bars)
    except DivergedError as err:
        if on_diverged is not None:
            on_diverged(err, trainer)
        raise
    finally:
        trainer.close()
        if bars is not None:
            bars.close()
    result = FitResult(last if last is not None else trainer.evaluation("val"),  # None: resumed at the very end
                       trainer.fast_path)
    if final_test:
        confusion = trainer.confusion("test")
        result.test_miou, result.test_iou = mean_iou(confusion), iou_per_class(confusion).tolist()
        result.test_confusion = confusion.tolist()
    if preview:
        result.previews = trainer.preview(preview)
    if out is not None:
        _append_json_line(out / "metrics.jsonl", result.final_record())
    return result


# --- small helpers ------------------------------------------------------------------------

def _append_json_line(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _as_bytes(image: torch.Tensor) -> torch.Tensor:
    """An image in [0, 1] as uint8 on the CPU (for looking at, not for training)."""
    return image.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def _upsample(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _downsample_labels(labels: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def _renormalised(pixel_weight: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Pixel weights times class weights, rescaled so that their total is unchanged."""
    if class_weights is None:
        return pixel_weight
    weighted = pixel_weight * class_weights[labels.clamp_max(len(class_weights) - 1)]
    return weighted * (pixel_weight.sum() / weighted.sum().clamp_min(1e-12))
