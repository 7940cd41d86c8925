"""A stored sweep's verdicts and HTML report, read from and written to its parent run."""

from orchestrator.report.build import (
    compute_verdicts,
    curve_metrics,
    report_at_end,
    report_sweep,
)

__all__ = ["compute_verdicts", "curve_metrics", "report_at_end", "report_sweep"]
