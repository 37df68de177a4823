"""AdapterModule.best_evaluation: the record's `best` (max, or min when lower is better; the first on ties), never
a NaN evaluation."""

from __future__ import annotations

import math
from types import SimpleNamespace

from dcft_lab.module import AdapterModule, best_evaluation


def _best(values, greater_is_better=True, metric="pearson"):
    evaluations = [{"step": i + 1, "metrics": {metric: v}} for i, v in enumerate(values)]
    best = best_evaluation(evaluations, metric, greater_is_better)
    owner = SimpleNamespace(evaluations=evaluations, main_metric=metric, greater_is_better=greater_is_better)
    assert AdapterModule.best_evaluation(owner) is best  # the module's method is this rule
    return None if best is None else best["step"]


def test_best_is_the_first_maximum_or_minimum():
    assert _best([1.0, 3.0, 3.0, 2.0]) == 2
    assert _best([4.0, 1.0, 1.0, 2.0], greater_is_better=False) == 2


def test_a_nan_evaluation_is_never_the_best():
    # (why a rule is needed: max() alone keeps a leading NaN, since no comparison with it is true)
    assert _best([math.nan, 50.0, 40.0]) == 2
    assert _best([math.nan, 5.0, math.nan, 4.0], greater_is_better=False) == 4
    assert _best([math.nan, math.nan]) is None


def test_evaluations_without_the_main_metric_are_skipped():
    owner = SimpleNamespace(evaluations=[{"step": 1, "metrics": {"f1": 90.0}}, {"step": 2, "metrics": {"accuracy": 70.0}}],
                            main_metric="accuracy", greater_is_better=True)
    assert AdapterModule.best_evaluation(owner)["step"] == 2
