"""Contrastive loss and memory-bank update at PASCAL VOC scale, on the CPU.

The scale of the official code's VOC runs: 14 labeled images x 41 x 41 feature pixels
= 23,534 pixel vectors, 21 classes, 256-d, a bank of 256 or 2048 vectors per class.
Times are medians of forward + backward (or of one update), in milliseconds.

    python benchmarks/contrastive.py [--threads 2] [--repeats 5]
    python benchmarks/contrastive.py --official PATH   # side by side with the official code


Rows:
- loss, closed form: the paper's loss given the selector weights, per-class sums
- loss, direct M x N: the same loss by its definition (per class, M x N similarities)
- whole term: selectors on the pixels (class blocks, bmm) and on the bank (bmm), the
  rescaled weights and the closed-form loss, forward + backward
- bank update: of 23,534 candidates, rank those that compete for a place (an image's
  class with more than its quota) with the teacher's selector and write the best per
  image and class into the ring buffers

``--official PATH`` names a checkout of github.com/Shathe/SemiSeg-Contrastive. Its
``contrastive_losses.py`` and ``utils/feature_memory.py`` are imported from there at run time
(nothing of them is copied into this project; their ``.cuda()`` calls are no-ops while they
run) and timed in the same interleaved loop as this project's code, on the same inputs, with
the same selector weights: the whole term (both selectors + loss, forward + backward; this
project's eager and compiled, as ``compile=true`` trains, its compile time printed apart, each
with float32 and with bf16 products in the selectors, as the bf16 fast path trains) and the
bank update, at bank 256 and 2048. Only that table is printed then.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import torch
from torch import nn

from trainer.contrastive_term import Term, build_term, contrastive_term
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


IMAGES_PER_BANK_QUOTA = 212  # labeled images of the official code's VOC 1/50 split


def _voc_quota(capacity: int) -> int:
    """The official code's VOC rule for vectors kept per image and class: int(C/3 * round(N/|X_l|))."""
    return max(1, int(CLASSES / 3 * round(capacity / IMAGES_PER_BANK_QUOTA)))


def _whole_term(feature_selectors: ClassSelectors, memory_selectors: ClassSelectors, leaf: torch.Tensor,
                classes: torch.Tensor, bank: torch.Tensor, valid: torch.Tensor,
                term: Term = contrastive_term) -> Callable[[], None]:
    """Both selectors, the rescaled weights and the closed-form loss, forward + backward: the
    trainer's own function (``build_term(True)``: as ``compile=true`` trains)."""
    def step() -> None:
        leaf.grad = None
        feature_selectors.zero_grad(set_to_none=True)
        memory_selectors.zero_grad(set_to_none=True)
        term(feature_selectors, memory_selectors, leaf, classes, bank, valid).backward()
    return step


def _update(teacher_selectors: ClassSelectors, memory: ClassMemoryBank, z: torch.Tensor,
            classes: torch.Tensor) -> Callable[[], None]:
    """Rank the competing candidates with the teacher's selector and write the best per image and class."""
    images = torch.arange(PIXELS) // (41 * 41)
    per_image = _voc_quota(memory.capacity)

    @torch.no_grad()
    def step() -> None:
        memory.add(z, classes, images, lambda index: teacher_selectors.score_pixels(z, classes[index], index),
                   per_image)
    return step


def _steps(capacity: int) -> dict[str, Callable[[], None]]:
    """The timed operations at one bank size."""
    z, classes, w, bank, valid, v = _problem(capacity)
    leaf = z.clone().requires_grad_()

    def loss_step(fn: Callable, *extra) -> Callable[[], None]:
        def step() -> None:
            leaf.grad = None
            fn(leaf, classes, w, bank, valid, v, *extra).backward()
        return step

    return {
        "loss, closed form": loss_step(contrastive_paper),
        "loss, direct M x N": loss_step(contrastive_paper_direct),
        "InfoNCE (tau 0.1), all memory as negatives": loss_step(contrastive_infonce, 0.1),
        "whole term (selectors + loss)": _whole_term(ClassSelectors(CLASSES, DIM), ClassSelectors(CLASSES, DIM),
                                                     leaf, classes, bank, valid),
        "bank update (rank + write)": _update(ClassSelectors(CLASSES, DIM).eval(),
                                              ClassMemoryBank(CLASSES, capacity, DIM), z, classes),
    }


# --- the official code, side by side ---------------------------------------------------------

OFFICIAL_FILES = ("contrastive_losses.py", "utils/feature_memory.py")


def _load_official(path: str) -> tuple[ModuleType, ModuleType]:
    """Import the official loss and memory modules from a checkout, or exit 2 with one line."""
    root = Path(path)
    missing = [name for name in OFFICIAL_FILES if not (root / name).is_file()]
    if missing:
        print(f"--official {path}: not a checkout of github.com/Shathe/SemiSeg-Contrastive "
              f"(missing {', '.join(missing)})", file=sys.stderr)
        sys.exit(2)
    modules = []
    for name in OFFICIAL_FILES:
        spec = importlib.util.spec_from_file_location(f"official_{Path(name).stem}", root / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        modules.append(module)
    return modules[0], modules[1]


@contextlib.contextmanager
def _cuda_is_a_no_op() -> Iterator[None]:
    """The official code moves tensors with ``.cuda()``; on the CPU those calls return self."""
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda  # type: ignore[method-assign]


def _official_heads(features: ClassSelectors, memory: ClassSelectors) -> nn.Module:
    """A module with the official model's selector attributes, holding the same weights as ours."""
    heads = nn.Module()
    # The official DeepLabv2 (model/deeplabv2.py) builds the same Linear, BN, LeakyReLU(0.2), Linear per class.
    for prefix, selectors in (("contrastive_class_selector_", features), ("contrastive_class_selector_memory", memory)):
        for c, mlp in enumerate(selectors.as_separate_mlps()):
            heads.add_module(prefix + str(c), mlp)
    return heads


def _side_by_side(capacity: int, losses_module: ModuleType, memory_module: ModuleType
                  ) -> dict[str, Callable[[], None]]:
    """Official and project: whole term and bank update at one bank size, on the same inputs."""
    z, classes, _, bank, valid, _ = _problem(capacity)
    leaf = z.clone().requires_grad_()
    official_leaf = z.clone().requires_grad_()
    features, memory = ClassSelectors(CLASSES, DIM), ClassSelectors(CLASSES, DIM)
    official = _official_heads(features, memory)
    # The same weights with bf16 products, as the trainer's selectors run on the bf16 fast path (amp).
    features_bf16, memory_bf16 = (_with_bf16_products(selectors) for selectors in (features, memory))
    official_bank = [bank[c].numpy().copy() for c in range(CLASSES)]  # its bank: a list of arrays

    def official_term() -> None:
        official_leaf.grad = None
        official.zero_grad(set_to_none=True)
        with _cuda_is_a_no_op():
            losses_module.contrastive_class_to_class_learned_memory(
                official, official_leaf, classes, CLASSES, official_bank).backward()

    # Updates: the teacher's selectors in eval mode on both sides, banks full, 14 labeled images.
    official_memory = memory_module.FeatureMemory(num_samples=IMAGES_PER_BANK_QUOTA, dataset="pascal_voc",
                                                  memory_per_class=capacity, feature_size=DIM, n_classes=CLASSES)
    official_memory.memory = [array.copy() for array in official_bank]
    teacher = ClassSelectors(CLASSES, DIM).eval()
    teacher_heads = _official_heads(teacher, memory).eval()
    project_memory = ClassMemoryBank(CLASSES, capacity, DIM)
    project_memory.vectors.copy_(bank)
    project_memory.count.fill_(capacity)

    def official_update() -> None:
        with _cuda_is_a_no_op():
            official_memory.add_features_from_sample_learned(teacher_heads, z, classes, IMAGES)

    _check_same_loss(features, official, leaf, classes, bank, valid, official_bank, losses_module)
    return {"official term": official_term, "project term": _whole_term(features, memory, leaf, classes, bank, valid),
            "project term, compiled": _whole_term(features, memory, leaf, classes, bank, valid, build_term(True)),
            "project term, bf16": _whole_term(features_bf16, memory_bf16, leaf, classes, bank, valid),
            "project term, bf16, compiled": _whole_term(features_bf16, memory_bf16, leaf, classes, bank, valid,
                                                        build_term(True)),
            "official update": official_update, "project update": _update(teacher, project_memory, z, classes)}


def _with_bf16_products(selectors: ClassSelectors) -> ClassSelectors:
    """A copy of ``selectors`` (the same weights) whose first-layer products take bf16 inputs."""
    twin = copy.deepcopy(selectors)
    twin.product_dtype = torch.bfloat16
    return twin


def _check_same_loss(features: ClassSelectors, official: nn.Module, z: torch.Tensor, classes: torch.Tensor,
                     bank: torch.Tensor, valid: torch.Tensor, official_bank: list, losses_module: ModuleType) -> None:
    """Both codes compute the same number: the official memory weights collapse to ones, so
    ours with memory weights of one must give its loss (selector BN in train mode on both sides)."""
    with torch.no_grad(), _cuda_is_a_no_op():
        expected = losses_module.contrastive_class_to_class_learned_memory(official, z, classes, CLASSES,
                                                                           official_bank).item()
        w = rescale_to_mean_one(torch.sigmoid(features.score_pixels(z, classes)), classes, CLASSES)
        ours = contrastive_paper(z, classes, w, bank, valid, valid.to(z.dtype)).item()
    if abs(ours - expected) > 1e-4 * abs(expected):
        raise SystemExit(f"the two codes disagree: official loss {expected:.6f}, this project's {ours:.6f}")


# (official timing, this project's, the row's label) of the side-by-side table
SIDE_BY_SIDE_ROWS = (("official term", "project term", "whole term (both selectors + loss, fwd + bwd)"),
                     ("official term", "project term, compiled", "whole term, compiled (`compile=true`)"),
                     ("official term", "project term, bf16", "whole term, bf16 products (`amp=true`)"),
                     ("official term", "project term, bf16, compiled",
                      "whole term, bf16 products, compiled (`amp=true compile=true`)"),
                     ("official update", "project update", "bank update (rank + write)"))


def _compare_with_official(path: str, repeats: int, threads: int) -> None:
    losses_module, memory_module = _load_official(path)
    fns = {}
    for capacity in (256, 2048):
        for name, fn in _side_by_side(capacity, losses_module, memory_module).items():
            fns[(capacity, name)] = fn
    compile_s = {}
    for capacity in (256, 2048):  # the first call compiles (the second size mostly reuses the first's kernels)
        for name in ("project term, compiled", "project term, bf16, compiled"):
            started = time.perf_counter()
            fns[(capacity, name)]()
            compile_s[(capacity, name)] = time.perf_counter() - started
    ms = _median_ms(fns, repeats)  # type: ignore[arg-type]
    print(f"VOC scale: {PIXELS:,} pixels, {CLASSES} classes, {DIM}-d, {threads} threads; median ms of "
          f"{repeats} interleaved runs; official code from {path}\n")
    print("| what | official | this project | official / project |")
    print("|---|---:|---:|---:|")
    for capacity in (256, 2048):
        for official, ours, label in SIDE_BY_SIDE_ROWS:
            a, b = ms[(capacity, official)], ms[(capacity, ours)]
            print(f"| {label}, bank {capacity} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    print("\nthe compiled terms' first calls (compiling them): "
          + ", ".join(f"{seconds:.1f} s for the {name.removeprefix('project term, ')} at bank {capacity}"
                      for (capacity, name), seconds in compile_s.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--official", metavar="PATH", help="a checkout of the official code: time it side by side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.official is not None:
        _compare_with_official(args.official, args.repeats, args.threads)
        return
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
