"""The PDF compliance document (reportlab platypus): the same content and charts as the
HTML, on numbered A4 pages.

reportlab's paragraphs read a small markup language, so every string that came from a
reply (participant ids, reasons, details) is escaped before it becomes a paragraph.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import matplotlib
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas
from reportlab.platypus import Image, KeepTogether, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from fl.compliance.charts import FIGURE_SIZE, charts_for
from fl.compliance.page import title_of

__all__ = ["render_pdf"]

_OK = colors.HexColor("#1e7e34")
_BAD = colors.HexColor("#b02a37")
_LINE = colors.HexColor("#d0d4d9")
_HEAD = colors.HexColor("#f1f3f5")
_MARGIN = 16 * mm
_WIDTH = A4[0] - 2 * _MARGIN


@cache
def _fonts() -> tuple[str, str, str]:
    """Regular, bold and mono fonts that have ε, μ, → and —: the DejaVu fonts matplotlib ships."""
    directory = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = {"FedSans": "DejaVuSans.ttf", "FedSans-Bold": "DejaVuSans-Bold.ttf", "FedMono": "DejaVuSansMono.ttf"}
    for name, file in names.items():
        pdfmetrics.registerFont(TTFont(name, str(directory / file)))
    return "FedSans", "FedSans-Bold", "FedMono"


@cache
def _styles() -> dict[str, ParagraphStyle]:
    regular, bold, mono = _fonts()
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontName=bold, fontSize=17, leading=21),
        "meta": ParagraphStyle("meta", parent=base["Normal"], fontName=regular, fontSize=8.5, leading=11,
                               textColor=colors.HexColor("#5f6b76"), alignment=TA_CENTER),
        "h2": ParagraphStyle("h2", parent=base["Heading2"], fontName=bold, fontSize=13, leading=16, spaceBefore=10),
        "h3": ParagraphStyle("h3", parent=base["Heading3"], fontName=bold, fontSize=10.5, leading=13, spaceBefore=6),
        "body": ParagraphStyle("body", parent=base["Normal"], fontName=regular, fontSize=9, leading=12),
        "cell": ParagraphStyle("cell", parent=base["Normal"], fontName=regular, fontSize=7.5, leading=9.5),
        "cellbold": ParagraphStyle("cellbold", parent=base["Normal"], fontName=bold, fontSize=7.5, leading=9.5),
        "detail": ParagraphStyle("detail", parent=base["Normal"], fontName=regular, fontSize=6.5, leading=8,
                                 textColor=colors.HexColor("#5f6b76")),
        "hash": ParagraphStyle("hash", parent=base["Normal"], fontName=mono, fontSize=7, leading=9, wordWrap="CJK"),
        "verdict": ParagraphStyle("verdict", parent=base["Normal"], fontName=bold, fontSize=30, leading=36,
                                  alignment=TA_CENTER),
        "caption": ParagraphStyle("caption", parent=base["Normal"], fontName=regular, fontSize=7.5, leading=9.5,
                                  textColor=colors.HexColor("#5f6b76")),
    }


def _p(text: Any, style: str = "cell") -> Paragraph:
    """A paragraph of plain text (escaped: it may come from an untrusted reply)."""
    return Paragraph(escape("" if text is None else str(text)), _styles()[style])


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "" if value is None else format(value, fmt)


def _table(rows: list[list[Any]], widths: list[float], *, header: bool = True,
           shade: list[int] | None = None) -> Table:
    table = Table(rows, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    style = [("GRID", (0, 0), (-1, -1), 0.5, _LINE), ("VALIGN", (0, 0), (-1, -1), "TOP"),
             ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3)]
    if header:
        style.append(("BACKGROUND", (0, 0), (-1, 0), _HEAD))
    for row in shade or []:
        style.append(("BACKGROUND", (0, row), (-1, row), colors.HexColor("#fff6f6")))
    table.setStyle(TableStyle(style))
    return table


class _NumberedCanvas(canvas.Canvas):
    """A canvas that writes "page N of M" once the page count is known."""

    label = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:  # noqa: N802 - reportlab's name
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self.setFont(_fonts()[0], 7.5)
            self.setFillColor(colors.HexColor("#5f6b76"))
            self.drawString(_MARGIN, 9 * mm, self.label)
            self.drawRightString(A4[0] - _MARGIN, 9 * mm, f"page {self._pageNumber} of {total}")
            super().showPage()
        super().save()


def _verdict(doc: dict[str, Any]) -> list[Any]:
    styles = _styles()
    word = "COMPLIANT" if doc["compliant"] else "NOT COMPLIANT"
    colour = _OK if doc["compliant"] else _BAD
    hex_colour = "#1e7e34" if doc["compliant"] else "#b02a37"
    cells: list[Any] = [Paragraph(f'<font color="{hex_colour}">{word}</font>', styles["verdict"])]
    if doc["problems"]:
        cells += [_p(f"• {p}", "body") for p in doc["problems"]]
    elif not doc["rounds"]:
        cells.append(_p("No round is recorded on the ledger yet.", "body"))
    else:
        cells.append(_p("Every accepted signature verified against the registered certificate; every update and "
                        "model re-hashed; the aggregate, the scores and the rewards recomputed and equal to what "
                        "was committed; the ledger's hash chain intact.", "body"))
    box = Table([[c] for c in cells], colWidths=[_WIDTH])
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 2.5, colour), ("TOPPADDING", (0, 0), (-1, -1), 4),
                             ("BOTTOMPADDING", (0, 0), (-1, -1), 4), ("LEFTPADDING", (0, 0), (-1, -1), 10)]))
    return [Spacer(1, 4), box, Spacer(1, 6)]


def _policy(doc: dict[str, Any]) -> list[Any]:
    story: list[Any] = [_p("Policy", "h2")]
    policy = doc.get("policy")
    if policy is None:
        return [*story, _p("No federation policy is recorded.", "body")]
    import json

    scorer = policy["scorer"]
    def with_params(name: str, params: dict[str, Any]) -> str:
        return f"{name} {json.dumps(params, sort_keys=True)}" if params else name

    rows = [
        ["Scorer", _p(f"{with_params(scorer['name'], scorer['params'])}, seed {scorer['seed']}")],
        ["Aggregation", _p(with_params(policy["aggregation"], policy["aggregation_params"]))],
        ["Data schema digest", _p(policy["data_schema_digest"] or "—", "hash")],
        ["Validation file digest", _p(policy["validation_digest"] or "—", "hash")],
        ["Initial model", _p(policy["initial_model"] or "—", "hash")],
        ["Hold-out share", _p("—" if policy["eval_fraction"] is None else f"{policy['eval_fraction'] * 100:g} %")],
        ["Reward budget per round", _p(f"{policy['reward_budget']} tokens")],
    ]
    training = policy.get("training")
    if training is not None:
        algorithm = training["algorithm"] or "—"
        if algorithm == "fedprox":
            algorithm += f" (μ = {training['mu']})"
        rows.append(["Training", _p(f"{algorithm}, compression {training['compression'] or 'none'}")])
        dp = training.get("dp")
        rows.append(["Differential privacy", _p(
            "off" if dp is None else f"DP-SGD: ε ≤ {dp['epsilon_round']} per round, ε ≤ {dp['epsilon_total']} in "
            f"total, δ = {dp['delta']}, clipping norm {dp['max_grad_norm']}")])
    rows.append(["Auditor organisations", _p(", ".join(policy["auditor_msps"]) or "—")])
    return [*story, _table([[_p(k, "cellbold"), v] for k, v in rows], [45 * mm, _WIDTH - 45 * mm], header=False)]


def _checks(doc: dict[str, Any]) -> list[Any]:
    names = list(doc["checks"])
    width = _WIDTH / len(names)
    rows = [[_p(n.replace("_", " "), "cellbold") for n in names], [_p(doc["checks"][n]) for n in names]]
    return [_p("Independent checks", "h2"), _table(rows, [width] * len(names))]


def _charts(doc: dict[str, Any]) -> list[Any]:
    story: list[Any] = [_p("Charts", "h2")]
    for chart in charts_for(doc):
        png = chart.render("png", dpi=150)
        width = _WIDTH * 0.75
        image = Image(io.BytesIO(png), width=width, height=width * FIGURE_SIZE[1] / FIGURE_SIZE[0])
        story.append(KeepTogether([_p(chart.title, "h3"), image, _p(chart.caption, "caption"), Spacer(1, 4)]))
    return story


def _round(report: dict[str, Any], has_epsilon: bool) -> list[Any]:
    verdict = "compliant" if report["compliant"] else "NOT compliant"
    story: list[Any] = [
        _p(f"Round {report['round']} — {verdict}", "h2"),
        _p(f"Global model {(report['base_model'] or '')[:16]}… → {(report['model'] or '—')[:16]}… "
           f"({report['aggregation'] or 'not committed'}); scorer {report['scorer']['name']}; "
           f"{report['accepted']} accepted, {report['rejected']} rejected.", "body"),
    ]
    story += [_p(f"• PROBLEM: {p}", "body") for p in report["problems"]]
    head = ["participant", "status", "reason", "score", "examples", "tokens", *(["ε"] if has_epsilon else []),
            "manifest hash"]
    rows: list[list[Any]] = [[_p(h, "cellbold") for h in head]]
    shade = []
    for i, e in enumerate(report["entries"], start=1):
        reason: list[Any] = [_p(e["reason"] or "")]
        if e["detail"]:
            reason.append(_p(e["detail"], "detail"))
        if e["status"] == "rejected":
            shade.append(i)
        rows.append([_p(e["participant"]), _p(e["status"]), reason, _p(_num(e["score"], "+.6f")),
                     _p("" if e["num_examples"] is None else e["num_examples"]), _p(e["reward"]),
                     *([_p(_num(e.get("epsilon"), "g"))] if has_epsilon else []),
                     _p((e["manifest_hash"] or "")[:16], "hash")])
    widths = [30 * mm, 17 * mm, 46 * mm, 20 * mm, 18 * mm, 14 * mm, *([12 * mm] if has_epsilon else [])]
    widths.append(_WIDTH - sum(widths))
    story.append(_table(rows, widths, shade=shade))
    evaluation = report.get("evaluation")
    story.append(_p("Federated evaluation of the committed model", "h3"))
    if evaluation is None:
        story.append(_p("No federated evaluation is recorded for this round.", "body"))
    else:
        head = ["participant", "status", "reason", "accuracy", "AUC", "log-loss", "examples", "signature"]
        rows = [[_p(h, "cellbold") for h in head]]
        for e in evaluation["entries"]:
            rows.append([_p(e["participant"]), _p(e["status"]), _p(e["reason"] or ""), _p(_num(e["accuracy"])),
                         _p(_num(e["auc"])), _p(_num(e["log_loss"])),
                         _p("" if e["examples"] is None else e["examples"]),
                         _p({True: "verified", False: "NOT verified", None: ""}[e["signature_verified"]])])
        mean = evaluation["mean"]
        rows.append([_p(f"federated mean ({mean['examples']} rows)", "cellbold"), "", "", _p(_num(mean["accuracy"])),
                     _p(_num(mean["auc"])), _p(_num(mean["log_loss"])), "", ""])
        widths = [30 * mm, 17 * mm, 26 * mm, 17 * mm, 17 * mm, 17 * mm, 18 * mm]
        widths.append(_WIDTH - sum(widths))
        story.append(_table(rows, widths))
    story.append(_p("Ledger references", "h3"))
    rows = [[_p(h, "cellbold") for h in ("transaction", "tx id", "block")]]
    for name, label in (("record", "RecordRound"), ("commit", "CommitModel"), ("rewards", "IssueRewards"),
                        ("evaluation", "RecordEvaluation")):
        tx = report["transactions"].get(name)
        rows.append([_p(label), _p(tx["tx_id"] if tx else "—", "hash"), _p(tx["block_number"] if tx else "—")])
    story.append(_table(rows, [32 * mm, _WIDTH - 50 * mm, 18 * mm]))
    return story


def render_pdf(doc: dict[str, Any]) -> bytes:
    """The PDF document of a :func:`ledger.reports.federation_report` (or of its
    :func:`ledger.reports.round_document`)."""
    title = title_of(doc)
    head = doc["ledger"]["head"]
    buffer = io.BytesIO()
    pdf = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=_MARGIN, rightMargin=_MARGIN, topMargin=_MARGIN,
                            bottomMargin=_MARGIN + 4 * mm, title=title, author=doc["auditor_msp"],
                            subject="fedledger compliance report")
    story: list[Any] = [
        _p(title, "title"),
        _p(f"Ledger: {doc['ledger']['backend']}, read as {doc['auditor_msp']}; audited head block "
           f"{head.get('block', '—')} {head.get('hash', '—')}", "meta"),
        *_verdict(doc), *_policy(doc), *_checks(doc), *_charts(doc),
    ]
    has_epsilon = any(e.get("epsilon") is not None for r in doc["rounds"] for e in r["entries"])
    for report in doc["rounds"]:
        story += [PageBreak(), *_round(report, has_epsilon)]

    class Numbered(_NumberedCanvas):
        label = f"{title} — head block {head.get('block', '—')}"

    pdf.build(story, canvasmaker=Numbered)
    return buffer.getvalue()
