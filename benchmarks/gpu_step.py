"""Seconds per training step at PASCAL VOC scale on a GPU: fp32 eager against bf16 + channels-last + compile.

The paper's VOC setting (DeepLabv2-R101, 321x321 crops, the trainer's default batches) on a
synthetic VOC tree written to a temporary folder, so the run needs no download. Every term of
the method acts (the step starts at the end of the ramp-up, the bank filled). For each mode it
prints the first step (which includes torch.compile's compilation), the median of the timed
steps, and the GPU memory peak::

    python benchmarks/gpu_step.py                       # on a CUDA machine: both modes, 10 timed steps
    python benchmarks/gpu_step.py --device cpu --network small --image-size 65 --steps 1   # a check of the script

``benchmarks/gpu_step.sh`` runs it after tests/test_gpu.py, in one short run on a lent accelerator.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainer.config import TrainConfig
from trainer.fit import Trainer

MODES = {"fp32": dict(amp=False, channels_last=False, compile=False),
         "bf16+cl+compile": dict(amp=True, channels_last=True, compile=True)}


def synthetic_voc(root: Path, images: int = 40, seed: int = 0) -> Path:
    """A VOC 2012 tree of ``images`` 500x375 pictures with a few labelled boxes each."""
    rng = np.random.default_rng(seed)
    names = [f"2007_{i:06d}" for i in range(images)]
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    for name in names:
        picture = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        labels = np.zeros((375, 500), np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, 300), rng.integers(0, 420)
            labels[y:y + 75, x:x + 80] = rng.integers(1, 21)
            picture[y:y + 75, x:x + 80] //= 2
        Image.fromarray(picture).save(root / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(labels).save(root / "SegmentationClassAug" / f"{name}.png")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train_aug.txt").write_text("\n".join(names[: images - 8]) + "\n")
    (lists / "val.txt").write_text("\n".join(names[images - 8:]) + "\n")
    return root


def time_mode(cfg: TrainConfig, steps: int) -> tuple[float, float, float]:
    """(first step s, median step s, memory peak GiB) of ``cfg`` from the end of its ramp-up."""
    trainer = Trainer(cfg)
    trainer.iteration = cfg.ramp_up  # every term on; the bank fills from the first step
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    first = step()
    step()  # a second shape (ClassMix) can recompile once
    timed = [step() for _ in range(steps)]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    trainer.close()
    return first, statistics.median(timed), peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--network", default="deeplabv2_r101")
    parser.add_argument("--image-size", type=int, default=321)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--workers", type=int, default=4, help="loading processes")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu to check the script")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = synthetic_voc(Path(folder) / "voc")
        for mode in args.modes:
            cfg = TrainConfig.from_dict({
                "dataset": "voc", "data_root": str(root), "network": args.network, "pretrained": "none",
                "image_size": args.image_size, "device": args.device, "workers": args.workers,
                **MODES[mode], "labeled_fraction": 0.5,
                "iterations": 100000, "ramp_up": 10, "bank_lead": 5, "confidence_threshold": 0.0})
            rows.append((mode, *time_mode(cfg, args.steps)))
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{args.network}, {args.image_size}x{args.image_size} crops, {name}, torch {torch.__version__}; "
          f"median of {args.steps} steps after two\n")
    print("| mode | first step (s, with compilation) | s/step | speed-up | GPU memory peak (GiB) |\n"
          "|---|---:|---:|---:|---:|")
    for mode, first, median, peak in rows:
        print(f"| {mode} | {first:.2f} | {median:.3f} | {rows[0][2] / median:.2f}x | {peak:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
