"""Where a digits trial's training step goes: ms per iteration, part by part, against this machine's peak.

The step is the default study's trial (the paper point of the ``default`` space with the study's
fixed values, one thread), timed in steady state: from the ramp-up on, so ClassMix, the bank
and the contrastive loss all act. Each part is timed on its own (its "self" time: a part
called inside another counts once, in the inner one), and its floating-point operations are
counted with ``torch.utils.flop_counter`` in a separate, untimed step, so the counting costs
nothing in the times. Matrix-product peaks of this machine (fp32 and bf16, same threads) are
measured in the same run; GFLOP/s and "% of peak" say how far each part is from it.

Modes (``--modes``) run interleaved, pass after pass, so a slow minute of a shared machine hits
each of them alike::

    python benchmarks/step.py                              # fp32 and bf16 autocast, 3 passes of 40 steps
    python benchmarks/step.py --modes fp32 bf16 bf16+cl --passes 5 --steps 60
    python benchmarks/step.py --set bank_size=2048 contrastive_loss=infonce

A mode is ``fp32`` or ``bf16`` (``amp=true``), optionally ``+cl`` (channels-last) and ``+compile``
(``compile=true``; its compilation happens in the warm-up steps, which are not timed, and the
networks' forward passes count in the parts that call them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import trainer.fit as fit_module
import trainer.losses as losses_module
from study.spec import StudySpec
from trainer.config import TrainConfig, parse_assignment
from trainer.fit import Trainer

# The parts, in the order of the method's step (trainer/fit.py), and what each one times.
PARTS = {
    "data": "the next labeled and unlabeled batches, and the labeled images' weak augmentation",
    "teacher": "the teacher's forward passes: pseudo-labels, and the labeled images for the bank",
    "classmix": "the two strong views of the unlabeled images (ClassMix, geometry, colour, blur)",
    "student forward": "the student's forward passes, projection and prediction heads",
    "losses": "cross-entropies, entropy, class weights and the contrastive loss (selectors apart)",
    "selectors": "the class selectors' scores of pixels and memory vectors",
    "bank update": "candidates, their ranking and the writes into the memory bank (selectors apart)",
    "backward": "one backward pass through every term",
    "optimizer": "SGD with momentum and weight decay",
    "ema": "the teacher following the student",
    "other": "the rest of the step: upsampling the logits, moving batches, learning rate, bookkeeping",
}
EVALUATION = "evaluation (per iteration, every eval_every)"


class PartTimer:
    """Self time and self FLOPs of nested parts of a step; ``wrap`` makes a callable one part."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, float] = defaultdict(float)
        self.counter: FlopCounterMode | None = None
        self._stack: list[list[float]] = []  # per open part: [children seconds, children flops]

    def _total_flops(self) -> float:
        return float(self.counter.get_total_flops()) if self.counter is not None else 0.0

    def wrap(self, part: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([0.0, 0.0])
            flops, started = self._total_flops(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds, done = time.perf_counter() - started, self._total_flops() - flops
                child_seconds, child_flops = self._stack.pop()
                self.seconds[part] += seconds - child_seconds
                self.flops[part] += done - child_flops
                if self._stack:
                    self._stack[-1][0] += seconds
                    self._stack[-1][1] += done
        return timed


def default_trial(assignments: list[str]) -> TrainConfig:
    """The paper point of the default study's space, as a trial of ``semiseg-study run`` trains it."""
    cfg = StudySpec(name="step").paper_config()
    return cfg.replace(**dict(parse_assignment(a) for a in assignments)) if assignments else cfg


def instrumented(cfg: TrainConfig, timer: PartTimer) -> Trainer:
    """A trainer at the end of its ramp-up (every term on, bank filled), its parts timed by ``timer``."""
    trainer = Trainer(cfg)
    trainer.iteration = max(0, cfg.ramp_up - cfg.bank_lead)
    while trainer.iteration < cfg.ramp_up + 5:  # the bank fills from ramp_up - bank_lead
        trainer.train_step()
    t = trainer
    t.labeled_stream.next = timer.wrap("data", t.labeled_stream.next)
    t.unlabeled_stream.next = timer.wrap("data", t.unlabeled_stream.next)
    t._labeled_batch = timer.wrap("data", t._labeled_batch)
    t._pseudo_labels = timer.wrap("teacher", t._pseudo_labels)
    t._strong_view = timer.wrap("classmix", t._strong_view)
    if not cfg.compile:  # a timer inside a compiled forward would break its graph: there the callers count it
        t.student.forward = timer.wrap("student forward", t.student.forward)
        t.teacher.forward = timer.wrap("teacher", t.teacher.forward)
    t.student.project = timer.wrap("student forward", t.student.project)
    t.student.predict = timer.wrap("student forward", t.student.predict)
    t.teacher.project = timer.wrap("teacher", t.teacher.project)
    for net in (t.student, t.teacher):
        net.feature_selectors.score_pixels = timer.wrap("selectors", net.feature_selectors.score_pixels)
        net.memory_selectors.score_bank = timer.wrap("selectors", net.memory_selectors.score_bank)
    t._update_bank = timer.wrap("bank update", t._update_bank)
    t._contrastive = timer.wrap("losses", t._contrastive)
    t._pseudo_label_ce = timer.wrap("losses", t._pseudo_label_ce)
    t._class_weights = timer.wrap("losses", t._class_weights)
    t.optimizer.step = timer.wrap("optimizer", t.optimizer.step)
    return trainer


def _wrap_losses(timer: PartTimer) -> dict[str, Callable]:
    """The loss functions the step calls straight from ``trainer.losses``, timed as "losses"; returns the originals."""
    originals = {name: getattr(losses_module, name) for name in ("supervised_ce", "entropy_term",
                                                                 "pseudo_label_weights")}
    for name, fn in originals.items():
        setattr(losses_module, name, timer.wrap("losses", fn))
    return originals


def measure(cfg: TrainConfig, steps: int) -> tuple[dict[str, float], dict[str, float], float]:
    """ms per iteration and GFLOP per iteration of each part, and the evaluation's ms per iteration."""
    timer = PartTimer()
    trainer = instrumented(cfg, timer)
    backward, update_teacher = torch.Tensor.backward, fit_module.update_teacher
    torch.Tensor.backward = timer.wrap("backward", backward)
    fit_module.update_teacher = timer.wrap("ema", update_teacher)
    loss_functions = _wrap_losses(timer)
    step = timer.wrap("other", trainer.train_step)
    try:
        counter = FlopCounterMode(display=False)
        timer.counter = counter
        with counter:
            step()  # one counted step: FLOPs are the same every step
        flops = {part: timer.flops[part] / 1e9 for part in PARTS}
        timer.counter = None
        timer.seconds.clear()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        whole = time.perf_counter() - started
    finally:
        torch.Tensor.backward, fit_module.update_teacher = backward, update_teacher
        for name, fn in loss_functions.items():
            setattr(losses_module, name, fn)
    ms = {part: 1000 * timer.seconds[part] / steps for part in PARTS}
    ms["other"] += 1000 * whole / steps - sum(ms.values())  # rounding of nested timers, to the whole
    started = time.perf_counter()
    trainer.evaluation("val")
    ms[EVALUATION] = 1000 * (time.perf_counter() - started) / cfg.eval_every
    trainer.close()
    return ms, flops, 1000 * whole / steps


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matrix product in ``dtype`` on this process's threads (best of ``repeats``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _seconds(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def mode_config(cfg: TrainConfig, mode: str) -> TrainConfig:
    precision, *options = mode.split("+")
    if precision not in ("fp32", "bf16") or not set(options) <= {"cl", "compile"}:
        raise SystemExit(f"mode {mode!r}: use fp32 or bf16, optionally +cl (channels-last) and +compile")
    return cfg.replace(amp=precision == "bf16", channels_last="cl" in options, compile="compile" in options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per pass and mode")
    parser.add_argument("--set", dest="assignments", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    base = default_trial(args.assignments)
    torch.set_num_threads(base.threads or 1)
    configs = {mode: mode_config(base, mode) for mode in args.modes}
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in configs}
    wholes: dict[str, list[float]] = {mode: [] for mode in configs}
    flops: dict[str, dict[str, float]] = {}
    from tqdm import tqdm

    with tqdm(total=args.passes * len(configs), desc="passes x modes", unit="run") as bar:
        for _ in range(args.passes):
            for mode, cfg in configs.items():
                ms, flops[mode], whole = measure(cfg, args.steps)
                runs[mode].append(ms)
                wholes[mode].append(whole)
                bar.update()
    print(f"threads {torch.get_num_threads()}; matrix-product peak: fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s; medians of {args.passes} passes of {args.steps} steps")
    for mode in configs:
        peak = peaks["bf16" if configs[mode].amp else "fp32"]
        print(f"\n{mode}: {statistics.median(wholes[mode]):.1f} ms per step (evaluation apart)\n")
        print("| part | ms/it | GFLOP/it | GFLOP/s | % of peak |\n|---|---:|---:|---:|---:|")
        for part in [*PARTS, EVALUATION]:
            ms = statistics.median(run[part] for run in runs[mode])
            gflop = flops[mode].get(part)
            rate = gflop / ms * 1000 if gflop and gflop >= 0.01 and ms > 0 else None  # else: elementwise work
            print(f"| {part} | {ms:.1f} | {'' if gflop is None else f'{gflop:.2f}'} | "
                  f"{'' if rate is None else f'{rate:.0f}'} | {'' if rate is None else f'{100 * rate / peak:.0f}'} |")
    if len(configs) > 1:
        first = args.modes[0]
        print("\n| mode | ms/step | speed-up over " + first + " |\n|---|---:|---:|")
        for mode in configs:
            print(f"| {mode} | {statistics.median(wholes[mode]):.1f} | "
                  f"{statistics.median(wholes[first]) / statistics.median(wholes[mode]):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
