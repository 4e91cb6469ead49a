"""A run's progress on the terminal: tqdm bars, and a line per evaluation above them."""

from __future__ import annotations

from tqdm import tqdm

from trainer.evaluation import Evaluation

_LABELS = {"pretrain": "pretraining the digit backbone (once; cached)", "train": "training"}


class ProgressBars:
    """The ``progress(stage, done, total)`` callback of ``Trainer``: one bar per stage.

    The pretraining bar goes when it is full; the training bar stays, under the evaluation lines.
    """

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.bars:
            self.bars[stage] = tqdm(total=total, desc=_LABELS[stage], unit="it", dynamic_ncols=True,
                                    leave=stage == "train")
        self.bars[stage].update(done - self.bars[stage].n)
        if done == total and stage == "pretrain":
            self.bars[stage].close()

    def evaluation(self, evaluation: Evaluation) -> None:
        bank = 100 * sum(evaluation.bank_fill) / len(evaluation.bank_fill)
        tqdm.write(f"iter {evaluation.iteration:>6}/{self.iterations}  val mIoU {100 * evaluation.miou:5.1f}  "
                   f"loss {evaluation.losses['total']:.3f}  bank {bank:3.0f}%  "
                   f"{evaluation.images_per_second:6.1f} img/s"
                   + (f"  (val stalled: reloaded the best, of iteration {evaluation.reloaded_best})"
                      if evaluation.reloaded_best is not None else ""))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
