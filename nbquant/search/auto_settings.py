"""The auto calibration's settings: loss budget, strategy, sensitivity metric, evaluation budget,
subsets; checked when made, so a bad value fails before any model runs."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..options import check_int, check_number
from .objective import Objective
from .ranking import METHODS as SENSITIVITY_METHODS
from .strategies import STRATEGIES


@dataclass(frozen=True)
class AutoSettings:
    """The search's settings: loss budget, strategy, sensitivity metric, evaluation budget, subsets."""

    max_drop: float = 0.005
    relative: bool = False
    strategy: str = "frugal"
    sensitivity: str = "output"
    max_evals: int = 10  # every model evaluated, the float and all-int8 ones included
    eval_num: int | None = None
    rank_num: int = 16  # images the ranking runs; 16 rank Lite0 as well as 32 (docs/benchmarks.md)
    metric: str | None = None  # built-in evaluator; None: picked by the output's shape (see LogitEvaluator)
    check_deploy: bool = True  # judge the deploy model (where this CPU runs it exactly); False: the simulation
    early_decisions: bool = True  # stop an evaluation once it cannot meet the budget (top1, agreement)
    objective: str = "latency"  # among passing configurations: predicted latency on this CPU, size or count
    always_rank: bool = False  # rank even when the all-int8 model meets the budget (nothing then needs it)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.sensitivity not in SENSITIVITY_METHODS:
            raise ConfigError(f"sensitivity must be one of {', '.join(SENSITIVITY_METHODS)}, "
                              f"got {self.sensitivity!r}")
        object.__setattr__(self, "objective", Objective.parse(self.objective, "objective").value)
        check_int("max_evals", self.max_evals)
        check_int("rank_num", self.rank_num)
        if self.eval_num is not None:
            check_int("eval_num", self.eval_num)
        check_number("max_drop", self.max_drop)
