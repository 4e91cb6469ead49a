"""Contrastive loss and memory-bank update at PASCAL VOC scale, on the CPU.

The scale of the official code's VOC runs: 14 labeled images x 41 x 41 feature pixels
= 23,534 pixel vectors, 21 classes, 256-d, a bank of 256 or 2048 vectors per class.
Times are medians of forward + backward (or of one update), in milliseconds.

    python benchmarks/contrastive.py [--threads 2] [--repeats 5]

Rows:
- loss, closed form: the paper's loss given the selector weights, per-class sums
- loss, direct M x N: the same loss by its definition (per class, M x N similarities)
- whole term: selectors on the pixels (grouped matmul) and on the bank (bmm), the
  rescaled weights and the closed-form loss, forward + backward
- bank update: rank 23,534 candidates with the teacher's selector and write the
  best per image and class into the ring buffers
The official code on this machine (../shared/FINDINGS.md): 530 ms for its loss at bank
256, 1,140 ms at 2048, 91 ms for its bank update.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from trainer.losses import contrastive_infonce, contrastive_paper, contrastive_paper_direct
from trainer.memory_bank import ClassMemoryBank
from trainer.models.selectors import ClassSelectors, rescale_to_mean_one

PIXELS, CLASSES, DIM, IMAGES = 14 * 41 * 41, 21, 256, 14


def _median_ms(fns: dict[int, Callable[[], None]], repeats: int) -> dict[int, float]:
    """Median ms of each function, called in turn inside one loop so that they share the
    machine's state (a VM's noise drifts over seconds; interleaving keeps comparisons fair)."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[int, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: 1000 * statistics.median(values) for key, values in times.items()}


def _problem(capacity: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # VOC-like classes: background holds 60% of the pixels, the other 20 classes share the rest.
    probs = torch.full((CLASSES,), 0.4 / (CLASSES - 1))
    probs[0] = 0.6
    classes = torch.multinomial(probs, PIXELS, replacement=True, generator=g)
    z = torch.randn(PIXELS, DIM, generator=g)
    bank = torch.nn.functional.normalize(torch.randn(CLASSES, capacity, DIM, generator=g), dim=2)  # as stored
    valid = torch.ones(CLASSES, capacity, dtype=torch.bool)
    w = torch.rand(PIXELS, generator=g) + 0.5
    v = torch.rand(CLASSES, capacity, generator=g) + 0.5
    return z, classes, w, bank, valid, v


def _steps(capacity: int) -> dict[str, Callable[[], None]]:
    """The timed operations at one bank size."""
    z, classes, w, bank, valid, v = _problem(capacity)
    leaf = z.clone().requires_grad_()

    def loss_step(fn: Callable, *extra) -> Callable[[], None]:
        def step() -> None:
            leaf.grad = None
            fn(leaf, classes, w, bank, valid, v, *extra).backward()
        return step

    feature_selectors, memory_selectors = ClassSelectors(CLASSES, DIM), ClassSelectors(CLASSES, DIM)

    def whole_term() -> None:
        leaf.grad = None
        pixel_w = rescale_to_mean_one(torch.sigmoid(feature_selectors.score_pixels(leaf.detach(), classes)),
                                      classes, CLASSES)
        s = torch.sigmoid(memory_selectors.score_bank(bank, valid))
        memory_w = s * (valid.sum(1, keepdim=True) / s.sum(1, keepdim=True))
        contrastive_paper(leaf, classes, pixel_w, bank, valid, memory_w).backward()

    teacher_selectors = ClassSelectors(CLASSES, DIM).eval()
    images = torch.arange(PIXELS) // (41 * 41)
    memory = ClassMemoryBank(CLASSES, capacity, DIM)
    per_image = max(1, round(CLASSES / 3 * round(capacity / 212)))  # the official code's VOC 1/50 rule

    @torch.no_grad()
    def update() -> None:
        scores = teacher_selectors.score_pixels(z, classes)
        memory.add(z, classes, images, scores, per_image)

    return {
        "loss, closed form": loss_step(contrastive_paper),
        "loss, direct M x N": loss_step(contrastive_paper_direct),
        "InfoNCE (tau 0.1), all memory as negatives": loss_step(contrastive_infonce, 0.1),
        "whole term (selectors + loss)": whole_term,
        "bank update (rank + write)": update,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {capacity: _steps(capacity) for capacity in (256, 2048)}
    slow = ("loss, direct M x N", "InfoNCE (tau 0.1), all memory as negatives")
    results = {name: _median_ms({c: steps[c][name] for c in steps},
                                max(3, args.repeats // 5) if name in slow else args.repeats)
               for name in steps[256]}
    small = {name: r[256] for name, r in results.items()}
    large = {name: r[2048] for name, r in results.items()}
    print(f"VOC scale: {PIXELS:,} pixels, {CLASSES} classes, {DIM}-d, {args.threads} threads; "
          "median ms of forward + backward (update: one call)\n")
    print("| what | bank 256 | bank 2048 | 2048 / 256 |")
    print("|---|---:|---:|---:|")
    for name in small:
        print(f"| {name} | {small[name]:.1f} | {large[name]:.1f} | {large[name] / small[name]:.2f} |")
    print(f"\nclosed form vs direct: {small['loss, direct M x N'] / small['loss, closed form']:.0f}x faster at "
          f"bank 256, {large['loss, direct M x N'] / large['loss, closed form']:.0f}x at bank 2048")


if __name__ == "__main__":
    main()
