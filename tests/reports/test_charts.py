"""Chart rendering, directly and through the pykka actor that hosts it."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.charts import (
    MAX_BARS,
    BestChart,
    ChartBar,
    ChartRenderer,
    ChartRequestRejected,
    DailyChart,
    _clean_text,
    render_best,
    render_daily,
)

PNG = b"\x89PNG\r\n\x1a\n"
DPI = 40


def size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG)
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def test_daily_chart_is_a_png_sized_by_its_bars_and_survives_hostile_labels() -> None:
    bars = (
        ChartBar("$PEPE", 12.0),  # a dollar sign would start mathtext
        ChartBar("🚀MOON\\x", float("nan")),
        ChartBar("", float("inf")),
        ChartBar("A" * 200, 0.2),
    )
    few = render_daily(DailyChart(title="Your calls $today$", bars=bars), dpi=DPI)
    many = render_daily(
        DailyChart(title="t", bars=tuple(ChartBar(f"T{i}", 2.0 + i) for i in range(MAX_BARS + 1))),
        dpi=DPI,
    )
    assert size(few)[0] == 8 * DPI
    # More than MAX_BARS bars are cut to MAX_BARS: the image is as tall as MAX_BARS bars make it.
    assert size(many)[1] == round((1.4 + 0.32 * MAX_BARS) * DPI)
    assert size(many)[1] > size(few)[1]


def test_best_chart_and_an_empty_day_render() -> None:
    best = BestChart(title="Best", bars=(ChartBar("MOON", 50, "(1 user)"), ChartBar("PEPE", 10)))
    assert size(render_best(best, dpi=DPI))[0] == 8 * DPI
    assert size(render_daily(DailyChart(title="none", bars=()), dpi=DPI))[1] == 3 * DPI


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100))
def test_labels_are_cut_printable_and_never_mathtext(text: str) -> None:
    cleaned = _clean_text(text, 24)
    assert cleaned.isprintable()
    assert cleaned.replace(r"\$", "").count("$") == 0
    assert len(cleaned.replace(r"\$", "$")) == min(len(text), 24)


def test_the_renderer_actor_answers_charts_and_refuses_anything_else() -> None:
    ref = ChartRenderer.start(dpi=DPI)
    try:
        png = ref.ask(BestChart(title="Best", bars=(ChartBar("MOON", 50),)), timeout=60)
        assert isinstance(png, bytes) and size(png)[0] == 8 * DPI
        with pytest.raises(ChartRequestRejected):
            ref.ask("draw me a sheep", timeout=10)
        assert ref.is_alive()
    finally:
        ref.stop()
