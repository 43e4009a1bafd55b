"""The HTML compliance document: one self-contained file (inline CSS, charts as data URIs).

Participant ids, reasons and details come from replies the coordinator did not trust, so
the template is rendered with autoescaping on: whatever they hold is shown as text.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from fl.compliance.charts import charts_for

__all__ = ["render_html", "title_of"]


def _short(value: str | None) -> str:
    return "—" if not value else f"{value[:16]}…"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.6f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:g} %"


@cache
def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("fl.compliance", "templates"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.globals.update(short=_short, number=_number, signed=_signed, percent=_percent)
    return environment


def title_of(doc: dict[str, Any]) -> str:
    """The document's title: the federation, and the round for a one-round document."""
    if "round" in doc:
        return f"Compliance report: round {doc['round']} of federation {doc['federation']}"
    return f"Compliance report: federation {doc['federation']}"


def render_html(doc: dict[str, Any]) -> str:
    """The HTML document of a :func:`ledger.reports.federation_report` (or of its
    :func:`ledger.reports.round_document`)."""
    charts = [{"id": c.id, "title": c.title, "caption": c.caption, "uri": c.data_uri("svg")}
              for c in charts_for(doc)]
    has_epsilon = any(e.get("epsilon") is not None for r in doc["rounds"] for e in r["entries"])
    return _environment().get_template("report.html.j2").render(
        doc=doc, title=title_of(doc), charts=charts, has_epsilon=has_epsilon)
