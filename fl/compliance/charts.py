"""The charts of a compliance document, drawn with matplotlib's Agg backend.

Each chart is drawn from the report's ``series`` (:func:`ledger.reports.federation_series`)
and nothing else, so the HTML (SVG) and the PDF (PNG) show the same figures. A federation
document plots values over rounds; a one-round document plots that round per institution.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: the reports are rendered headless

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["FIGURE_SIZE", "Chart", "charts_for"]

# Inches; the PDF scales the PNG to its text width keeping this aspect.
FIGURE_SIZE = (6.0, 3.0)
_COLOURS = plt.get_cmap("tab10").colors
# Institutions often overlap exactly (equal scores, equal rewards): distinct markers and
# dashes keep every line visible under the next one.
_MARKERS = ("o", "s", "^", "D", "v", "P")
_DASHES = ("-", "--", "-.", ":")
_EMPTY = dict(ha="center", va="center", fontsize=11, color="#666666")


@dataclass(frozen=True)
class Chart:
    """One chart: its element id in the HTML, a title, a caption, and how to draw it."""

    id: str
    title: str
    caption: str
    draw: Callable[[Figure], None]

    def render(self, fmt: str, *, dpi: int = 150) -> bytes:
        """The chart as ``svg`` or ``png`` bytes (no date in the metadata: same input, same bytes)."""
        figure = plt.figure(figsize=FIGURE_SIZE, dpi=dpi)
        try:
            self.draw(figure)
            figure.tight_layout()
            buffer = io.BytesIO()
            metadata = {"Date": None} if fmt == "svg" else {}
            figure.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
        finally:
            plt.close(figure)
        return buffer.getvalue()

    def data_uri(self, fmt: str = "svg") -> str:
        """The chart inlined as a ``data:`` URI, so the HTML loads nothing from anywhere."""
        mime = {"svg": "image/svg+xml", "png": "image/png"}[fmt]
        return f"data:{mime};base64,{base64.b64encode(self.render(fmt)).decode('ascii')}"


def _colour(index: int) -> Any:
    return _COLOURS[index % len(_COLOURS)]


def _style(axes: Any, ylabel: str, rounds: list[int] | None = None) -> None:
    axes.set_ylabel(ylabel)
    axes.grid(True, axis="y", color="#dddddd", linewidth=0.8)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    if rounds is not None:
        axes.set_xlabel("round")
        axes.set_xticks(rounds)


def _lines(axes: Any, rounds: list[int], series: dict[str, list[Any]], ylabel: str) -> None:
    """One line per key over the rounds; gaps where a value is None."""
    _style(axes, ylabel, rounds)
    drawn = False
    for i, (name, values) in enumerate(series.items()):
        points = [(r, v) for r, v in zip(rounds, values) if v is not None]
        if points:
            axes.plot([r for r, _ in points], [v for _, v in points], label=name, color=_colour(i),
                      marker=_MARKERS[i % len(_MARKERS)], linestyle=_DASHES[i % len(_DASHES)],
                      markersize=7 - i % 3, linewidth=1.8)
            drawn = True
    if drawn:
        axes.legend(fontsize=8, frameon=False, loc="best")
    else:
        axes.text(0.5, 0.5, "nothing recorded", transform=axes.transAxes, **_EMPTY)


def _bars(axes: Any, series: dict[str, list[Any]], ylabel: str) -> None:
    """One bar per key (one round's values)."""
    _style(axes, ylabel)
    names = [n for n, v in series.items() if v and v[0] is not None]
    if not names:
        axes.text(0.5, 0.5, "nothing recorded", transform=axes.transAxes, **_EMPTY)
        return
    keys = list(series)
    axes.bar(names, [series[n][0] for n in names], color=[_colour(keys.index(n)) for n in names])
    axes.axhline(0, color="#999999", linewidth=0.8)
    axes.tick_params(axis="x", labelsize=8)


def _evaluation(doc: dict[str, Any]) -> Callable[[Figure], None]:
    series = doc["series"]

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        if len(series["rounds"]) > 1:
            _lines(axes, series["rounds"], {"federated AUC": series["evaluation"]["auc"],
                                            "federated accuracy": series["evaluation"]["accuracy"]}, "metric")
            axes.set_ylim(0, 1.02)
            return
        evaluation = doc["rounds"][0].get("evaluation") if doc["rounds"] else None
        _style(axes, "metric")
        accepted = [e for e in (evaluation or {}).get("entries", []) if e["status"] == "accepted"]
        if not accepted:
            axes.text(0.5, 0.5, "no federated evaluation recorded", transform=axes.transAxes, **_EMPTY)
            return
        names = [e["participant"] for e in accepted]
        positions = range(len(names))
        for offset, (metric, label, colour) in enumerate(
                (("auc", "AUC", _colour(0)), ("accuracy", "accuracy", _colour(1)))):
            axes.bar([p + (offset - 0.5) * 0.38 for p in positions], [e[metric] or 0 for e in accepted],
                     width=0.38, label=label, color=colour)
            mean = evaluation["mean"][metric]
            if mean is not None:
                axes.axhline(mean, color=colour, linestyle="--", linewidth=1, label=f"federated {label} {mean:.3f}")
        axes.set_xticks(list(positions), names, fontsize=8)
        axes.set_ylim(0, 1.02)
        axes.legend(fontsize=8, frameon=False, loc="lower right")

    return draw


def _per_institution(doc: dict[str, Any], key: str, ylabel: str) -> Callable[[Figure], None]:
    series = doc["series"]

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        if len(series["rounds"]) > 1:
            _lines(axes, series["rounds"], series[key], ylabel)
        else:
            _bars(axes, series[key], ylabel)

    return draw


def _rejections(doc: dict[str, Any]) -> Callable[[Figure], None]:
    series = doc["series"]

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        rounds = series["rounds"]
        _style(axes, "rejected replies", rounds)
        bottom = [0] * len(rounds)
        for i, (reason, counts) in enumerate(series["rejections"].items()):
            axes.bar(rounds, counts, bottom=bottom, label=reason, color=_colour(i), width=0.6)
            bottom = [b + c for b, c in zip(bottom, counts)]
        if series["rejections"]:
            axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        else:
            axes.text(0.5, 0.5, "no reply was rejected", transform=axes.transAxes, **_EMPTY)
        axes.set_ylim(0, max([*bottom, 1]) + 0.5)
        axes.yaxis.get_major_locator().set_params(integer=True)
        if len(rounds) == 1:
            axes.set_xlim(rounds[0] - 1, rounds[0] + 1)

    return draw


def _epsilon(doc: dict[str, Any]) -> Callable[[Figure], None]:
    series = doc["series"]

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        if len(series["rounds"]) > 1:
            _lines(axes, series["rounds"], series["epsilon"], "cumulative ε")
        else:
            _bars(axes, series["epsilon"], "cumulative ε")
        budget = series.get("epsilon_total")
        if budget is not None:
            axes.axhline(budget, color="#c0392b", linestyle="--", linewidth=1.2, label=f"budget ε = {budget:g}")
            axes.set_ylim(0, budget * 1.15)
            axes.legend(fontsize=8, frameon=False, loc="best")

    return draw


def charts_for(doc: dict[str, Any]) -> list[Chart]:
    """The charts of a federation or one-round document, in reading order; the privacy
    chart only when some entry carries an ε."""
    one = len(doc["series"]["rounds"]) == 1
    where = f"in round {doc['series']['rounds'][0]}" if one else "per round"
    charts = [
        Chart("chart-evaluation", "Global model: federated evaluation",
              ("Each institution's signed hold-out AUC and accuracy of the committed model, and their "
               "examples-weighted federated mean (dashed)." if one else
               "The examples-weighted mean of the institutions' signed hold-out metrics of each committed model."),
              _evaluation(doc)),
        Chart("chart-scores", f"Contribution score {where}",
              "The score the scorer gave each accepted update (recomputed by the auditor).",
              _per_institution(doc, "scores", "score")),
        Chart("chart-tokens", f"Tokens issued {where}",
              "The reward each institution received for its accepted update.",
              _per_institution(doc, "tokens", "tokens")),
        Chart("chart-rejections", f"Rejections by reason {where}",
              "Replies the coordinator refused, stacked by the recorded reason.", _rejections(doc)),
    ]
    if doc["series"]["epsilon"]:
        charts.append(Chart("chart-epsilon", "Differential privacy spent",
                            "Each institution's cumulative ε (the sum of the ε it signed in its accepted rounds) "
                            "against the federation's total budget.", _epsilon(doc)))
    return charts
