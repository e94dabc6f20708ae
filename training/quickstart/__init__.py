"""``facepriv quickstart``: the whole product on a laptop CPU in minutes, with no data or downloads.

It renders synthetic identities, trains an RGB baseline and the two privacy frontends with
the recommended recipe (PartialFace and DCTDP, warm-started from the RGB model and distilled
from it), verifies every model on *held-out* identities through the protected inference
path, attacks every protected frontend to measure how much identity still leaks, and writes
``report.md`` / ``report.html`` (table, ROC plot, reconstruction grid, accuracy-vs-leakage
plot) plus ``metrics.json``.

Faces are rendered at 64x64 (not 112) so that training fits the CPU budget; the code path is
the one used at 112. Numbers are whatever the run produced: a synthetic-face demonstration,
not a benchmark.

Modules: ``plan`` (sizes, time budgets), ``heldout`` (data, verification), ``recipe``
(TrainConfigs, training), ``leakage`` (judge, attacks), ``report`` (figures, Markdown/HTML),
``cli`` (the stages).
"""

from .cli import build_parser, main
from .plan import Plan, default_threads, make_plan
from .recipe import Recipe

__all__ = ["Plan", "Recipe", "build_parser", "default_threads", "main", "make_plan"]
