"""The HTML report: one self-contained page from a run, with its figures, CSV and JSON beside it.

>>> from cnnlens.report import build_report, ReportOptions
>>> build_report("runs/fer", options=ReportOptions(images_per_class=2))   # doctest: +SKIP
PosixPath('runs/fer/report/index.html')
"""

from __future__ import annotations

from cnnlens.report.build import SECTIONS, build_report, default_out, write_report
from cnnlens.report.context import ReportInputs, ReportOptions, default_average_methods, default_methods

__all__ = ["SECTIONS", "ReportInputs", "ReportOptions", "build_report", "default_average_methods", "default_methods",
           "default_out", "write_report"]
