"""The HTML audit report of a study: figures (:mod:`~gradleak.report.figures`), the plain-language summary and
privacy–utility table (:mod:`~gradleak.report.summary`), and the page (:mod:`~gradleak.report.html`)."""

from gradleak.report.html import Report, build_report

__all__ = ["Report", "build_report"]
