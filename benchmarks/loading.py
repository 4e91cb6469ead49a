"""Does a GPU wait on data? Cityscapes-sized batches from disk, with 0, 1 and 2 worker processes.

A synthetic tree in the Cityscapes layout (2048x1024 PNG photos and labelIds maps; smooth
images, so they compress about as real photos do) is read the way the Cityscapes preset
reads it: halved to 1024x512 (``resize_height=512``), cut into 512x512 crops, batches of 5
as in the official Cityscapes configs. Per setting:

- build: seconds to set the data up (``workers=0`` decodes every image into memory here);
- batches/s: the stream read as fast as it goes (the loader's ceiling);
- wait per step: the mean time ``next()`` blocks while the main process spends ``--step``
  seconds per step elsewhere, as a GPU step would (a sleep: the GPU does the work, the
  CPU is free), after a warm-up of 3 steps.

    python benchmarks/loading.py [--images 24] [--batches 30] [--step 0.25]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.config import TrainConfig
from trainer.data import build_data


def _photo(rng: np.random.Generator) -> np.ndarray:
    coarse = torch.from_numpy(rng.random((1, 3, 16, 32), dtype=np.float32))
    smooth = F.interpolate(coarse, size=(1024, 2048), mode="bicubic", align_corners=False)[0]
    noise = torch.from_numpy(rng.normal(0, 0.02, (3, 1024, 2048)).astype(np.float32))
    return ((smooth + noise).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()


def make_tree(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("val", 2)):
        for n in range(count):
            stem = f"bench_{n:06d}_000019"
            for folder, name, array in (
                    ("leftImg8bit", f"{stem}_leftImg8bit.png", _photo(rng)),
                    ("gtFine", f"{stem}_gtFine_labelIds.png", _labels(rng))):
                path = root / folder / split / "bench" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)


def _labels(rng: np.random.Generator) -> np.ndarray:
    ids = np.full((1024, 2048), 7, np.uint8)
    ids[:300] = 23
    for _ in range(20):
        y, x = rng.integers(0, 900), rng.integers(0, 1900)
        ids[y:y + 120, x:x + 150] = rng.choice([24, 26, 11, 21])
    return ids


def measure(root: Path, workers: int, batches: int, step: float) -> dict[str, float]:
    cfg = TrainConfig.from_dict({"dataset": "cityscapes", "data_root": str(root), "workers": workers,
                                 "labeled_fraction": 1.0, "network": "small", "pretrained": "none"})
    started = time.perf_counter()
    data = build_data(cfg)
    build = time.perf_counter() - started
    stream = data.labeled.stream(cfg.batch_labeled, generator=torch.Generator(), key="bench")
    stream.next()  # workers started, first batch in
    started = time.perf_counter()
    for _ in range(batches):
        stream.next()
    rate = batches / (time.perf_counter() - started)
    waits = []
    for k in range(batches + 3):
        time.sleep(step)
        started = time.perf_counter()
        stream.next()
        if k >= 3:
            waits.append(time.perf_counter() - started)
    stream.close()
    return {"build": build, "rate": rate, "wait": 1000 * float(np.mean(waits))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--step", type=float, default=0.25, help="seconds a training step takes elsewhere")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        make_tree(root, args.images)
        size = sum(p.stat().st_size for p in root.rglob("*_leftImg8bit.png")) / args.images / 2**20
        print(f"{args.images} images of 2048x1024 ({size:.1f} MiB each as PNG) written in "
              f"{time.perf_counter() - started:.0f} s; batches of 5 crops of 512x512 from 1024x512")
        print(f"| workers | build (s) | batches/s | wait per step of {args.step:g} s (ms) |")
        print("|---:|---:|---:|---:|")
        for workers in args.workers:
            row = measure(root, workers, args.batches, args.step)
            print(f"| {workers} | {row['build']:.1f} | {row['rate']:.2f} | {row['wait']:.0f} |")


if __name__ == "__main__":
    main()
