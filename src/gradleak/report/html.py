"""``gradleak report DIR``: the HTML report (Jinja2) of a study folder, with its PNG figures in ``DIR/report/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from gradleak.fl.safefile import atomic_write_bytes
from gradleak.report.curves import accuracy_curves, curves_vs_param, curves_vs_training
from gradleak.report.data import load_study
from gradleak.report.figures import (
    Figure,
    evidence_figures,
    recon_grids,
    tsne_figure,
)
from gradleak.report.summary import privacy_utility_rows, summary_lines
from gradleak.report.verdict import group_verdicts, recommendation, rule_statement, threat_model

__all__ = ["Report", "build_report"]

SECTIONS = ("Leakage and utility", "Leakage and local training", "Reconstructions", "Embeddings")


@dataclass(frozen=True)
class Report:
    """The written report: its HTML file, figures, the verdict sentences (one per client group), the
    recommendation, and the detail sentences."""

    html: Path
    figures: tuple[Figure, ...]
    summary: tuple[str, ...]
    verdicts: tuple[str, ...] = ()
    recommendation: str = ""


def build_report(out: str | Path) -> Report:
    """Draw the figures the results support and write ``out/report.html`` (figures in ``out/report/``).

    Raises
    ------
    GradleakError
        ``out`` is not a study folder or no federation has finished.
    """
    out = Path(out)
    data = load_study(out)
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # figures of an earlier report that the results may no longer support
        old.unlink()
    verdicts = group_verdicts(data)
    advice = recommendation(data, verdicts)
    evidence = evidence_figures(data, folder, verdicts)
    figures = [*accuracy_curves(data, folder), *curves_vs_param(data, folder), *curves_vs_training(data, folder),
               *recon_grids(data, folder), *tsne_figure(data, folder)]
    summary = summary_lines(data)
    scenario = data.config.get("scenario", {})
    env = Environment(loader=PackageLoader("gradleak.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("report.html.j2").render(
        name=data.config.get("name", "study"),
        scenario=f"scenario {scenario.get('preset') or 'explicit'} on {scenario.get('dataset') or 'its dataset'}",
        n_settings=len(data.settings), n_units=len(data.attacks), missing=data.missing, summary=summary,
        threat=threat_model(data), rule=rule_statement(data), recommendation=advice.sentence,
        recommended=advice.setting is not None,
        verdicts=[{"sentence": v.sentence, "leaks": v.leaks_anywhere,
                   "image": f"report/{evidence[i].path.name}" if i in evidence else None,
                   "caption": evidence[i].caption if i in evidence else ""} for i, v in enumerate(verdicts)],
        table=privacy_utility_rows(data), tau=data.tau, confidence=f"{data.confidence:.0%}",
        sections=[(s, [{"src": f"report/{f.path.name}", "title": f.title, "caption": f.caption}
                       for f in figures if f.section == s]) for s in SECTIONS if any(f.section == s for f in figures)],
    )
    path = out / "report.html"
    atomic_write_bytes(path, html.encode())
    return Report(path, (*evidence.values(), *figures), tuple(summary), tuple(v.sentence for v in verdicts),
                  advice.sentence)
