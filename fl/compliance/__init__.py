"""Compliance documents people read: the audit's verdict, the recorded policy, every round's
entries and ledger references, and charts, as one self-contained HTML file and a PDF.

The data comes from :func:`ledger.reports.federation_report` (computed, not rendered,
there); this package only renders it: :func:`render_html`, :func:`render_pdf`, and
:func:`write_documents` for the files ``fedledger report`` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fl.compliance.page import render_html
from fl.compliance.pdf import render_pdf

__all__ = ["render_html", "render_pdf", "write_documents"]


def write_documents(report: dict[str, Any], directory: Path, *, rounds: list[int] | None = None,
                    federation: bool = True) -> list[Path]:
    """Write ``federation.html``/``.pdf`` (unless ``federation`` is False) and
    ``round-NNNN.html``/``.pdf`` for each of ``rounds`` (default: every round in the
    report) into ``directory``; return the paths."""
    from ledger.reports import round_document

    directory.mkdir(parents=True, exist_ok=True)
    documents = [("federation", report)] if federation else []
    chosen = [r["round"] for r in report["rounds"]] if rounds is None else rounds
    documents += [(f"round-{n:04d}", round_document(report, n)) for n in chosen]
    paths = []
    for stem, doc in documents:
        html, pdf = directory / f"{stem}.html", directory / f"{stem}.pdf"
        html.write_text(render_html(doc), encoding="utf-8")
        pdf.write_bytes(render_pdf(doc))
        paths += [html, pdf]
    return paths
