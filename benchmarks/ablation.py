"""Ablation on the embedded digits at the preset's labeled fraction: which parts of the method help?

Each variant trains on several seeds (the data is the same for all; only the training
seed changes) and is scored on val and on test (the teacher, as the preset evaluates).

    python benchmarks/ablation.py                  # 3 seeds, 2 runs at a time, one thread each
    python benchmarks/ablation.py --seeds 0 1 --jobs 1 --iterations 500

Prints a Markdown table (mean ± std over seeds, and each seed) and writes the raw
numbers to benchmarks/results/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from trainer.presets import SUPERVISED_ONLY

NO_CONTRASTIVE = {"contrastive_weight_labeled": 0.0, "contrastive_weight_unlabeled": 0.0}

VARIANTS: dict[str, dict] = {
    "supervised only": SUPERVISED_ONLY,
    "+ self-training (teacher, ClassMix, pseudo-labels)": {**NO_CONTRASTIVE, "class_balance": "off"},
    "+ contrastive memory bank (the paper's full method)": {"class_balance": "off"},
    "self-training, class-balanced pseudo-labels": {**NO_CONTRASTIVE},
    "+ contrastive, class-balanced pseudo-labels (digits preset)": {},
    "upper bound: supervised, every scene labeled": {**SUPERVISED_ONLY, "labeled_fraction": 1.0},
}


def run(variant: str, seed: int, iterations: int | None) -> dict:
    from trainer.config import TrainConfig
    from trainer.fit import Trainer

    changes = {**VARIANTS[variant], "seed": seed, "threads": 1}
    if iterations:
        changes["iterations"] = iterations
    cfg = TrainConfig.from_dict(changes)
    trainer = Trainer(cfg)
    started = time.perf_counter()
    while trainer.iteration < cfg.iterations:
        trainer.train_step()
    val, _ = trainer.evaluate("val")
    test, _ = trainer.evaluate("test")
    return {"variant": variant, "seed": seed, "val": 100 * val, "test": 100 * test,
            "seconds": time.perf_counter() - started, "seconds_per_step": trainer.train_seconds / cfg.iterations}


def _cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def table(results: list[dict]) -> str:
    lines = ["| variant | val mIoU | test mIoU | per seed (val / test) | s/step |", "|---|---|---|---|---|"]
    for variant in VARIANTS:
        rows = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        if not rows:
            continue
        seeds = ", ".join(f"{r['val']:.1f} / {r['test']:.1f}" for r in rows)
        step = statistics.mean(r["seconds_per_step"] for r in rows)
        lines.append(f"| {variant} | {_cell([r['val'] for r in rows])} | {_cell([r['test'] for r in rows])} "
                     f"| {seeds} | {step:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    parser.add_argument("--iterations", type=int, help="override the preset's iterations")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--upper-bound-seeds", type=int, default=1, help="seeds for the all-labeled row")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ablation.json")
    args = parser.parse_args()

    from trainer.config import TrainConfig
    from trainer.pretrain import pretrained_backbone

    preset = TrainConfig.from_dict({})
    pretrained_backbone(preset.network, preset.pretrain_steps)  # once, before the workers start

    jobs = [(v, s) for v in args.variants for s in
            (args.seeds[:args.upper_bound_seeds] if v.startswith("upper bound") else args.seeds)]
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run, v, s, args.iterations) for v, s in jobs]
        for done, future in enumerate(futures, 1):
            result = future.result()
            results.append(result)
            print(f"[{done}/{len(jobs)}] {result['variant']} seed {result['seed']}: "
                  f"val {result['val']:.1f} test {result['test']:.1f} ({result['seconds']:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))


if __name__ == "__main__":
    main()
