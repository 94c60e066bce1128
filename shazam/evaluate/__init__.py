"""Per-task evaluation report (DESIGN §6): does the student beat the best single teacher?

Reads every model's per-fold outputs (``results/models/{task}/{model}/fold_{k}/``) and writes
``results/report/{task}/``: ``per_fold.tsv``, ``summary.tsv``, ``comparison.tsv``,
``dataset.tsv``, PNG figures and ``report.md`` / ``report.html``.

- :mod:`.run` — :func:`evaluate_task`, the whole report of one task;
- :mod:`.runs` — the models' outputs, pooled out-of-fold predictions, late fusion;
- :mod:`.pooled` — the pooled estimates (survival: C-index within folds; the log-rank p of
  each fold's cases split at its training cut-off, shared with the Kaplan–Meier figure);
- :mod:`.stats` — bootstrap CIs and the paired comparison (mean ± SD over folds, pooled
  estimate with a case-level bootstrap CI, paired bootstrap Δ and Wilcoxon p over folds);
- :mod:`.tables` — the TSV tables and the choice of the single-teacher baseline (on
  validation; the best on test is shown as an optimistic oracle);
- :mod:`.figures`, :mod:`.narrative` (the sections), :mod:`.document` (Markdown and HTML),
  :mod:`.provenance` (software and teachers).

A metric that is undefined on some data (one class present, no events, …) is missing with the
reason, never 0 and never a crash.
"""

from .run import EvalConfig, evaluate_task

__all__ = ["EvalConfig", "evaluate_task"]
