"""Reports people read: one run (`privaudit report`), the whole job (`privaudit run`), and the sweep.

`collect_run` reads a run directory into a frozen `RunReport`; `write_report`
renders it as a self-contained HTML page, a Markdown twin with its PNGs, and
report.json. `run_pipeline` trains, attacks, audits and reports in one go.
`run_sweep` repeats train + attack over privacy budgets and clipping norms.

Importing this package does not import torch; training, attacking and reading
a run directory do, when they happen.

>>> from privaudit.reports import verdict_sentence
>>> verdict_sentence({"verdict": "FAIL", "epsilon_claimed": 1.0, "epsilon_lower_bound": 2.5,
...                   "confidence": 0.95, "delta": 1e-5}).split(".")[0]
'FAIL: with 95% confidence, ε ≥ 2'
"""

from ._collect import RunReport as RunReport
from ._collect import collect_run as collect_run
from ._pipeline import QUICK as QUICK
from ._pipeline import PipelineEvent as PipelineEvent
from ._pipeline import PipelineOptions as PipelineOptions
from ._pipeline import PipelineResult as PipelineResult
from ._pipeline import run_pipeline as run_pipeline
from ._privacy import EpsilonCurve as EpsilonCurve
from ._privacy import epsilon_curves as epsilon_curves
from ._privacy import ledger_prefix_event as ledger_prefix_event
from ._sweep import DEFAULT_EPSILONS as DEFAULT_EPSILONS
from ._sweep import SweepEvent as SweepEvent
from ._sweep import SweepOptions as SweepOptions
from ._sweep import SweepResult as SweepResult
from ._sweep import run_sweep as run_sweep
from ._text import verdict_sentence as verdict_sentence
from ._write import ReportFiles as ReportFiles
from ._write import write_report as write_report

__all__ = [
    "DEFAULT_EPSILONS",
    "EpsilonCurve",
    "PipelineEvent",
    "PipelineOptions",
    "PipelineResult",
    "QUICK",
    "ReportFiles",
    "RunReport",
    "SweepEvent",
    "SweepOptions",
    "SweepResult",
    "collect_run",
    "epsilon_curves",
    "ledger_prefix_event",
    "run_pipeline",
    "run_sweep",
    "verdict_sentence",
    "write_report",
]
