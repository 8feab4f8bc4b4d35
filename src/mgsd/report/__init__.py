"""A self-contained HTML report of a run directory: results with CIs, charts and a case gallery."""

from mgsd.report.build import build_report

__all__ = ["build_report"]
