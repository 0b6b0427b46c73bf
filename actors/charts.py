"""Report charts: PNG images rendered with matplotlib on a pykka thread.

Rendering a chart takes tens to hundreds of milliseconds of CPU, far too long to hold the
event loop. :class:`ChartRenderer` is a pykka ``ThreadingActor`` hosted by
``runtime.island.ThreadIsland`` (child "charts"): the reports actor asks the island, the
island hands the request to this thread and awaits the answer off the loop.

Only matplotlib's object API is used (``Figure`` + the Agg canvas, never ``pyplot``): it keeps
no global figure state, so rendering is safe on a thread and needs no display. The
rendering functions are pure (request in, PNG bytes out) and are tested directly.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import pykka
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

__all__ = [
    "MAX_BARS",
    "BestChart",
    "ChartBar",
    "ChartRenderer",
    "ChartRequestRejected",
    "DailyChart",
    "render_best",
    "render_daily",
]

MAX_BARS: Final = 40
"""More bars than this are unreadable in a Telegram photo; callers send the top ones."""
MAX_LABEL: Final = 24
MAX_TITLE: Final = 80
MAX_MULTIPLE: Final = 1e6

_BAR_IN: Final = 0.32
_CHAR_IN: Final = 0.085
_MIN_HEIGHT_IN: Final = 3.0
_TICKS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_MEDALS: Final = ("#d4a017", "#9aa0a6", "#b0703c")
_BEST_COLOR: Final = "#4a6fa5"


class ChartBar(msgspec.Struct, frozen=True):
    """One bar: a token's label and the peak multiple it reached (1.0 = never 2x)."""

    label: str
    multiple: float
    note: str = ""
    """Shown after the value (for the best-of-day chart: how many users were told)."""


class DailyChart(msgspec.Struct, frozen=True, kw_only=True):
    """A user's day: the peak multiple of every token they were told about."""

    title: str
    bars: tuple[ChartBar, ...]


class BestChart(msgspec.Struct, frozen=True, kw_only=True):
    """The best calls of the day across all users, best first."""

    title: str
    bars: tuple[ChartBar, ...]


class ChartRequestRejected(ValueError):
    """The renderer was sent something that is not a chart request."""


def render_daily(chart: DailyChart, *, dpi: int = 110, width_in: float = 8.0) -> bytes:
    """Horizontal bars of peak multiples (log scale), coloured by how far each token went."""
    bars = _clean(chart.bars)
    colors = [_tier_color(bar.multiple) for bar in bars]
    return _render(_clean_text(chart.title, MAX_TITLE), bars, colors, dpi=dpi, width_in=width_in)


def render_best(chart: BestChart, *, dpi: int = 110, width_in: float = 8.0) -> bytes:
    """Horizontal bars of the day's top calls; the first three get medal colours."""
    bars = _clean(chart.bars)
    colors = [_MEDALS[i] if i < len(_MEDALS) else _BEST_COLOR for i in range(len(bars))]
    return _render(_clean_text(chart.title, MAX_TITLE), bars, colors, dpi=dpi, width_in=width_in)


class ChartRenderer(pykka.ThreadingActor):
    """The thread that renders: answers :class:`DailyChart` / :class:`BestChart` with PNG bytes.

    Anything else raises :class:`ChartRequestRejected`; the island reports it to its caller
    and is restarted by its supervisor, as for any crash.
    """

    def __init__(self, dpi: int = 110, width_in: float = 8.0) -> None:
        super().__init__()
        self.dpi = max(30, min(600, int(dpi)))
        self.width_in = max(3.0, min(30.0, float(width_in)))
        self.rendered = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, DailyChart):
            png = render_daily(message, dpi=self.dpi, width_in=self.width_in)
        elif isinstance(message, BestChart):
            png = render_best(message, dpi=self.dpi, width_in=self.width_in)
        else:
            raise ChartRequestRejected(f"not a chart request: {type(message).__name__}")
        self.rendered += 1
        return png


# --- drawing ---------------------------------------------------------------------------------


def _render(
    title: str, bars: Sequence[ChartBar], colors: Sequence[str], *, dpi: int, width_in: float
) -> bytes:
    height_in = max(_MIN_HEIGHT_IN, 1.4 + _BAR_IN * len(bars))
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    # Fixed margins from the label lengths: a layout engine would measure every text once
    # more, which costs about a third of the rendering time.
    label_in = 0.3 + _CHAR_IN * max((len(bar.label) for bar in bars), default=0)
    fig.subplots_adjust(
        left=min(0.45, label_in / width_in),
        right=0.97,
        top=1 - 0.55 / height_in,
        bottom=0.75 / height_in,
    )
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
    if not bars:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No calls", ha="center", va="center", fontsize=14, color="#666666")
        return _png(fig)
    top = max(bar.multiple for bar in bars)
    right = _upper(top)
    positions = list(range(len(bars)))
    # Bars span [1, multiple] on a log axis, so a token that never moved has no bar at all.
    widths = [bar.multiple - 1.0 for bar in bars]
    ax.barh(positions, widths, left=1.0, color=list(colors), height=0.7)
    ax.set_xscale("log")
    ax.set_xlim(1.0, right)
    ticks = [t for t in _TICKS if t <= right]
    ax.set_xticks(ticks, [f"{t}x" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yticks(positions, [bar.label for bar in bars])
    ax.invert_yaxis()
    ax.grid(axis="x", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    for y, bar in zip(positions, bars, strict=True):
        text = _multiple_label(bar.multiple) + (f"  {bar.note}" if bar.note else "")
        ax.text(bar.multiple * 1.04, y, text, va="center", fontsize=9, color="#333333")
    ax.set_xlabel("peak multiple since the call")
    return _png(fig)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, facecolor="white")
    return buffer.getvalue()


def _upper(top: float) -> float:
    """Room right of the longest bar for its label (a log axis needs a factor, not a sum)."""
    return max(3.0, top * 2.2)


def _tier_color(multiple: float) -> str:
    if multiple >= 50:
        return "#7b2cbf"
    if multiple >= 10:
        return "#1b7f3b"
    if multiple >= 5:
        return "#2e9e4f"
    if multiple >= 2:
        return "#6cc070"
    return "#b0b0b0"


def _multiple_label(multiple: float) -> str:
    if multiple < 2:
        return "<2x"
    if multiple < 10:
        return f"{multiple:.1f}".rstrip("0").rstrip(".") + "x"
    return f"{multiple:,.0f}x"


def _clean(bars: Sequence[ChartBar]) -> list[ChartBar]:
    """At most MAX_BARS bars, each with a drawable label and a finite multiple >= 1."""
    out: list[ChartBar] = []
    for bar in bars[:MAX_BARS]:
        multiple = bar.multiple
        if not isinstance(multiple, int | float) or not math.isfinite(multiple):
            multiple = 1.0
        out.append(
            ChartBar(
                _clean_text(bar.label, MAX_LABEL) or "?",
                min(MAX_MULTIPLE, max(1.0, float(multiple))),
                _clean_text(bar.note, MAX_LABEL),
            )
        )
    return out


def _clean_text(text: str, limit: int) -> str:
    """Printable characters the default font has; ``$`` escaped so it is not mathtext.

    Token symbols are chosen by strangers: "$PEPE" would otherwise start a TeX formula, and
    emoji would only draw as empty boxes (with a warning per glyph).
    """
    kept = "".join(c if c.isprintable() and ord(c) < 0x0530 else "?" for c in text[:limit])
    return kept.replace("\\", "/").replace("$", r"\$")
