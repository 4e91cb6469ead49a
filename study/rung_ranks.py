"""How well a trial's score at an early rung ranks its final score: the premise of early stopping.

ASHA stops a trial on its val mIoU at the grace period. That is only sound if the order of
the trials at that rung is the order they would end in. Trials that ran the full budget show
it: per evaluated iteration, the Spearman rank correlation between their val mIoU there and
their final val mIoU. The report draws it; ``run`` and the report flag a grace period whose
rung ranks poorly (below ``POOR``), once enough trials ran to the end (``MIN_TRIALS``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from study.records import FINISHED, METRIC

POOR = 0.5       # below this, the rung's order says little about the final order
MIN_TRIALS = 5   # with fewer full trials a rank correlation is noise


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation, ties sharing their mean rank; NaN when a side is constant or too short."""
    if len(x) < 2:
        return math.nan
    from scipy.stats import ConstantInputWarning, spearmanr  # deferred: scipy.stats takes seconds to import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(x, y).statistic)


@dataclass(frozen=True)
class RungRank:
    iteration: int
    spearman: float  # NaN where undefined
    trials: int      # full-budget trials with an evaluation at this iteration

    @property
    def known(self) -> bool:
        return self.trials >= MIN_TRIALS and not math.isnan(self.spearman)

    @property
    def poor(self) -> bool:
        return self.known and self.spearman < POOR


def rung_ranks(reports: Iterable[dict[str, Any]], trials: Iterable[dict[str, Any]]) -> list[RungRank]:
    """Per evaluated iteration before the last, how its val mIoU ranks the final one among finished trials."""
    finished = {t["trial_id"] for t in trials if t.get("status") == FINISHED}
    curves: dict[str, dict[int, float]] = {}
    for r in reports:
        value = r.get(METRIC)
        if r["trial_id"] in finished and value is not None and not math.isnan(value):
            curves.setdefault(r["trial_id"], {})[int(r["iteration"])] = float(value)
    finals = {tid: curve[max(curve)] for tid, curve in curves.items() if curve}
    last = max((max(c) for c in curves.values() if c), default=None)
    iterations = sorted({i for c in curves.values() for i in c if i != last})
    ranks = []
    for iteration in iterations:
        ids = sorted(tid for tid, c in curves.items() if iteration in c and max(c) == last)
        ranks.append(RungRank(iteration, spearman([curves[t][iteration] for t in ids], [finals[t] for t in ids]),
                              len(ids)))
    return ranks


def grace_warning(ranks: Sequence[RungRank], grace: int) -> str | None:
    """One line if the grace period's rung ranks the final score poorly, else None."""
    at = next((r for r in ranks if r.iteration == grace), None)
    if at is None or not at.poor:
        return None
    better = next((r.iteration for r in ranks if r.iteration > grace and r.known and r.spearman >= POOR), None)
    hint = (f"; --grace {better} ranks at least {POOR}" if better
            else "; ASHA may stop trials that would have ended best")
    return (f"the grace period's rung (iteration {grace}) ranks the final val mIoU poorly: Spearman "
            f"{at.spearman:.2f} over {at.trials} trials that ran to the end (below {POOR}){hint}")
