"""A self-contained HTML report of a run directory: results with CIs, charts and a case gallery."""

from __future__ import annotations

from typing import Any

__all__ = ["build_report"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (e.g. for ``mgsd report``'s parser) must not import matplotlib,
    # which alone took most of ``mgsd --version``'s start-up.
    if name == "build_report":
        from mgsd.report.build import build_report

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
