"""Multiplier alert texts: what they say, and that nothing from outside can break the HTML."""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.alert_texts import (
    dexscreener_url,
    format_multiple,
    format_usd,
    multiplier_alert,
    split_token_key,
)

PROPERTY = settings(max_examples=200, deadline=None)
TOKEN = "solana:So1aPepeTokenMint1111111111111111111111"


class _Tags(HTMLParser):
    """Collects the tags, link targets and text of a Telegram HTML message."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.bold: list[str] = []
        self._in_bold = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_bold = tag == "b"
        self.hrefs += [v or "" for k, v in attrs if k == "href"]

    def handle_endtag(self, tag: str) -> None:
        self.tags.append("/" + tag)
        self._in_bold = False

    def handle_data(self, data: str) -> None:
        if self._in_bold:
            self.bold.append(data)


def parse(text: str) -> _Tags:
    parser = _Tags()
    parser.feed(text)
    parser.close()
    return parser


def test_alert_names_symbol_threshold_chain_multiple_fdvs_and_link() -> None:
    text = multiplier_alert(
        token_key=TOKEN,
        symbol="PEPE",
        threshold=10.0,
        multiple=12.34,
        fdv_then=120_000.0,
        fdv_now=1_480_800.0,
    )
    assert text.splitlines() == [
        "🚀 <b>PEPE</b> hit <b>10x</b> on solana",
        "Now 12.3x: FDV $120K → $1.48M",
        '<a href="https://dexscreener.com/solana/So1aPepeTokenMint1111111111111111111111">'
        "DexScreener</a>",
    ]


def test_hostile_symbol_and_key_are_escaped() -> None:
    text = multiplier_alert(
        token_key='evil"><script>:addr&"x',
        symbol="<b>RUG</b> & co",
        threshold=2.0,
        multiple=2.0,
        fdv_then=1.0,
        fdv_now=2.0,
    )
    tags = parse(text)
    assert tags.tags == ["b", "/b", "b", "/b", "a", "/a"]
    assert tags.bold[0] == "<b>RUG</b> & co"
    assert tags.hrefs == ["https://dexscreener.com/evil%22%3E%3Cscript%3E/addr%26%22x"]


def test_missing_symbol_falls_back_to_the_address_and_long_ones_are_cut() -> None:
    text = multiplier_alert(
        token_key=TOKEN, symbol="  ", threshold=5, multiple=5.2, fdv_then=1e6, fdv_now=5.2e6
    )
    assert parse(text).bold[0] == "So1aPe…"
    long = multiplier_alert(
        token_key=TOKEN, symbol="X" * 200, threshold=5, multiple=5, fdv_then=1, fdv_now=5
    )
    assert parse(long).bold[0] == "X" * 31 + "…"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "$0"),
        (950.4, "$950"),
        (12_345, "$12.3K"),
        (1_000, "$1.00K"),
        (4_560_000, "$4.56M"),
        (120_000_000, "$120M"),
        (1.2e9, "$1.20B"),
        (3e13, "$30.0T"),
        (float("nan"), "n/a"),
        (float("inf"), "n/a"),
    ],
)
def test_format_usd(value: float, shown: str) -> None:
    assert format_usd(value) == shown


def test_format_multiple_and_split_key() -> None:
    assert [format_multiple(x) for x in (2.049, 12.34, 150.2)] == ["2.05x", "12.3x", "150x"]
    assert format_multiple(float("nan")) == "n/a"
    assert split_token_key("bsc:0xabc:def") == ("bsc", "0xabc:def")
    assert split_token_key("nochain") == ("", "nochain")
    assert dexscreener_url("", "a b") == "https://dexscreener.com/search?q=a%20b"


@PROPERTY
@given(
    symbol=st.text(max_size=80),
    chain=st.text(max_size=20),
    address=st.text(min_size=1, max_size=60),
    threshold=st.sampled_from([2.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
    fdv=st.floats(min_value=1e-6, max_value=1e15),
    multiple=st.floats(min_value=1.0, max_value=1e6),
)
def test_any_input_gives_well_formed_html_with_one_link(
    symbol: str, chain: str, address: str, threshold: float, fdv: float, multiple: float
) -> None:
    key = f"{chain.replace(':', '')}:{address}"
    text = multiplier_alert(
        token_key=key,
        symbol=symbol,
        threshold=threshold,
        multiple=multiple,
        fdv_then=fdv,
        fdv_now=fdv * multiple,
    )
    tags = parse(text)
    assert tags.tags == ["b", "/b", "b", "/b", "a", "/a"]
    assert len(tags.hrefs) == 1 and tags.hrefs[0].startswith("https://dexscreener.com/")
    assert not re.search(r"[\s\"'<>]", tags.hrefs[0])
    printable = "".join(ch for ch in symbol if ch.isprintable()).strip()
    if printable and len(printable) <= 32:
        assert tags.bold[0] == printable
    assert tags.bold[1] == f"{threshold:g}x"
    assert unescape(text).endswith("DexScreener</a>")
