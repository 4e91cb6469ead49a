"""The study's dashboard: one self-contained HTML page of Plotly figures, built from Parquet alone."""

from study.report.data import StudyData, load_study
from study.report.page import SECTIONS, render, watch, write_report

__all__ = ["SECTIONS", "StudyData", "load_study", "render", "watch", "write_report"]
