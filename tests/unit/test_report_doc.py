"""The compliance documents (HTML and PDF) built from constructed round views and audit reports.

The views are real :class:`~ledger.records.RoundView` records as the ledger returns them;
what is checked is what a reader relies on: the verdict, every participant and reason,
that untrusted strings stay text, that the charts are inside the file, and that the PDF
has pages with something drawn on them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest

from fl.compliance import render_html, render_pdf, write_documents
from ledger.audit import AuditReport
from ledger.records import (
    EvaluationEntry,
    EvaluationRecord,
    FederationPolicy,
    ModelCommit,
    PrivacyPolicy,
    RoundEntry,
    RoundRecord,
    RoundView,
    ScorerSpec,
    TrainingPolicy,
    TxReceipt,
)
from ledger.reports import federation_report, render_markdown, round_document, write_reports

SCRIPT = '<script>alert("owned")</script>'
INTRUDER = "<img src=x onerror=alert(1)>"


def digest(label: str) -> str:
    return hashlib.sha256(label.encode("utf-8")).hexdigest()


def views(rounds: int = 3, *, dp: bool = True) -> list[RoundView]:
    """bank-a and bank-b accepted every round, bank-c rejected with a hostile detail, and
    from round 2 an unknown sender whose claimed id is markup."""
    result = []
    for r in range(1, rounds + 1):
        entries = [
            RoundEntry(participant=p, status="accepted", update=digest(f"u-{p}-{r}"),
                       manifest_hash=digest(f"m-{p}-{r}"), num_examples=100 + 10 * i,
                       score_ppm=300_000 + 100_000 * i - 50_000 * r,
                       epsilon_ppm=1_500_000 + 100_000 * i if dp else None)
            for i, p in enumerate(["bank-a", "bank-b"])
        ]
        entries.append(RoundEntry(participant="bank-c", status="rejected", reason="digest_mismatch", detail=SCRIPT))
        if r > 1:
            entries.append(RoundEntry(participant=INTRUDER, status="rejected", reason="unknown_participant"))

        def tx(k: int) -> TxReceipt:
            return TxReceipt(tx_id=digest(f"tx-{k}-{r}"), block_number=4 * r + k, timestamp_ms=1_700_000_000_000)

        evaluation = EvaluationRecord(round=r, model=digest(f"model-{r}"), entries=[
            EvaluationEntry(participant=p, status="accepted", num_examples=50,
                            accuracy_ppm=600_000 + 50_000 * r + 10_000 * i, auc_ppm=650_000 + 60_000 * r - 20_000 * i,
                            log_loss_ppm=500_000)
            for i, p in enumerate(["bank-a", "bank-b", "bank-c"])])
        result.append(RoundView(
            federation="fed-1", round=r,
            record=RoundRecord(round=r, base_model=digest(f"model-{r - 1}"), scorer=ScorerSpec(), entries=entries),
            record_tx=tx(0),
            commit=ModelCommit(round=r, base_model=digest(f"model-{r - 1}"), model=digest(f"model-{r}"),
                               accepted=["bank-a", "bank-b"], weights={"bank-a": 100, "bank-b": 110}),
            commit_tx=tx(1), rewards={"bank-a": 400 + 10 * r, "bank-b": 600 - 10 * r}, rewards_tx=tx(2),
            evaluation=evaluation, evaluation_tx=tx(3)))
    return result


def audit(*, dp: bool = True, problems: dict[int, list[str]] | None = None) -> AuditReport:
    training = TrainingPolicy(algorithm="fedprox", mu_ppm=10_000, dp=PrivacyPolicy(
        epsilon_round_ppm=2_000_000, epsilon_total_ppm=6_000_000, delta_ppb=10_000,
        max_grad_norm_ppm=1_000_000)) if dp else TrainingPolicy()
    problems = problems or {}
    return AuditReport(
        federation="fed-1", rounds=3, signatures_checked=6, head={"block": 17, "hash": digest("head")},
        problems=[p for ps in problems.values() for p in ps], round_problems=problems,
        policy=FederationPolicy(auditor_msps=["AuditorMSP"], training=training, data_schema_digest=digest("schema"),
                                validation_digest=digest("validation"), eval_fraction_ppm=250_000))


def report(**kwargs) -> dict:
    dp = kwargs.pop("dp", True)
    return federation_report(views(dp=dp), audit(dp=dp, **kwargs), backend="embedded", auditor_msp="AuditorMSP")


def chart_images(html: str) -> dict[str, bytes]:
    """Chart element id → the decoded image its data URI carries."""
    found = re.findall(r'<img id="(chart-[a-z-]+)" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', html)
    return {chart: base64.b64decode(data) for chart, data in found}


def test_series_give_each_round_its_federated_metric_scores_tokens_rejections_and_privacy_spent():
    series = report()["series"]
    assert series["rounds"] == [1, 2, 3]
    assert series["evaluation"]["accuracy"] == [0.66, 0.71, 0.76]  # examples-weighted mean of the three
    assert series["scores"] == {"bank-a": [0.25, 0.2, 0.15], "bank-b": [0.35, 0.3, 0.25]}
    assert series["tokens"] == {"bank-a": [410, 420, 430], "bank-b": [590, 580, 570]}
    assert series["rejections"] == {"digest_mismatch": [1, 1, 1], "unknown_participant": [0, 1, 1]}
    assert series["epsilon"] == {"bank-a": [1.5, 3.0, 4.5], "bank-b": [1.6, 3.2, 4.8]}  # cumulative
    assert series["epsilon_total"] == 6.0
    json.dumps(series)  # JSON-ready, as --json prints it


def test_a_compliant_federation_says_so_in_large_type_with_policy_participants_and_reasons():
    html = render_html(report())
    assert re.search(r'<div class="verdict ok" id="verdict">\s*<div class="word">COMPLIANT</div>', html)
    assert "NOT COMPLIANT" not in html
    for participant in ("bank-a", "bank-b", "bank-c"):
        assert f"<td>{participant}</td>" in html
    for reason in ("digest_mismatch", "unknown_participant"):
        assert reason in html
    for fact in ("fedprox", "ε ≤ 2.0 per round", "ε ≤ 6.0 in total", "25 %", digest("schema"), digest("validation"),
                 digest("tx-1-3"), digest("head")):
        assert fact in html, fact


def test_a_problem_of_one_round_makes_the_federation_and_that_round_not_compliant():
    problem = "round 2: recomputed model 1234… differs from committed abcd…"
    whole = report(problems={2: [problem]})
    assert whole["compliant"] is False and whole["problems"] == [problem]
    html = render_html(whole)
    assert '<div class="word">NOT COMPLIANT</div>' in html and problem in html
    assert round_document(whole, 1)["compliant"] is True
    second = round_document(whole, 2)
    assert second["compliant"] is False and second["problems"] == [problem]
    assert '<div class="word">NOT COMPLIANT</div>' in render_html(second)
    with pytest.raises(KeyError, match="round 9"):
        round_document(whole, 9)


def test_markup_in_a_rejection_detail_or_a_claimed_id_is_shown_as_text_not_run():
    html = render_html(report())
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_charts_are_inlined_as_data_uris_and_nothing_is_loaded_from_a_network():
    html = render_html(report())
    images = chart_images(html)
    assert sorted(images) == ["chart-epsilon", "chart-evaluation", "chart-rejections", "chart-scores",
                              "chart-tokens"]
    for chart, svg in images.items():
        assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg and len(svg) > 5_000, chart
    assert "http://" not in html and "https://" not in html
    assert not re.search(r'(?:src|href)="(?!data:|#)', html)  # every reference is inline or in-page
    assert "<link" not in html and "@import" not in html and "url(" not in html


def test_without_differential_privacy_there_is_no_privacy_chart_or_column():
    whole = report(dp=False)
    assert whole["series"]["epsilon"] == {} and whole["series"]["epsilon_total"] is None
    html = render_html(whole)
    assert "chart-epsilon" not in chart_images(html) and "<th>ε</th>" not in html
    assert "Differential privacy</th><td>off" in html


def test_pdf_has_numbered_pages_with_the_verdict_and_charts_drawn_on_them():
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pdf = render_pdf(report(problems={3: ["round 3: issued rewards differ"]}))
    assert pdf.startswith(b"%PDF")
    document = pdfium.PdfDocument(pdf)
    try:
        assert len(document) >= 2  # the federation pages, then one per round
        texts = [document[i].get_textpage().get_text_range() for i in range(len(document))]
        assert "NOT COMPLIANT" in texts[0] and "round 3: issued rewards differ" in texts[0]
        assert all(f"page {i + 1} of {len(document)}" in t for i, t in enumerate(texts))
        assert any(SCRIPT in t for t in texts)  # reportlab markup escaped: the detail is printed as written
        images = sum(len(list(document[i].get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE])))
                     for i in range(len(document)))
        assert images == 5  # evaluation, scores, tokens, rejections, privacy
        for i in range(len(document)):
            image = document[i].render(scale=1).to_pil().convert("L")
            inked = sum(image.histogram()[:200])
            assert inked > 2_000, f"page {i + 1} looks blank ({inked} non-white pixels)"
    finally:
        document.close()


def test_write_documents_writes_the_federation_and_each_round_or_only_the_round_asked_for(tmp_path):
    whole = federation_report(views(2), audit(), backend="embedded", auditor_msp="AuditorMSP")
    paths = write_documents(whole, tmp_path / "all")
    assert sorted(p.name for p in paths) == [
        "federation.html", "federation.pdf", "round-0001.html", "round-0001.pdf", "round-0002.html",
        "round-0002.pdf"]
    assert "Compliance report: round 2 of federation fed-1" in (tmp_path / "all" / "round-0002.html").read_text()
    only = write_documents(whole, tmp_path / "one", rounds=[2], federation=False)
    assert sorted(p.name for p in only) == ["round-0002.html", "round-0002.pdf"]
    # The Markdown and JSON of a round still come from the same round dicts.
    written = write_reports(whole["rounds"][:1], tmp_path / "md")
    assert sorted(p.name for p in written) == ["round-0001.json", "round-0001.md"]
    assert "| bank-b | accepted |" in render_markdown(whole["rounds"][0])
