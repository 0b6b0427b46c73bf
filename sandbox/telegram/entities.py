"""Loose re-implementation of Telegram's text formatting parsers (HTML, MarkdownV2, Markdown).

Telegram counts the 4096-character limit *after* entity parsing and rejects malformed markup
with "can't parse entities", so the emulator must parse just as strictly to surface the same bugs
a real bot would hit. Besides the plain text and the entities, every parse yields a sanitised
HTML rendering that the web chat page can show without trusting the bot's markup.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Entity",
    "EntityParseError",
    "Parsed",
    "command_entities",
    "parse_text",
    "utf16_len",
]


class EntityParseError(ValueError):
    """Markup Telegram would refuse; the message is the detail after "can't parse entities: "."""


@dataclass(frozen=True, slots=True)
class Entity:
    """One formatting span; offsets count code points (see `to_api` for UTF-16 offsets)."""

    type: str
    offset: int
    length: int
    url: str | None = None
    language: str | None = None

    def to_api(self, plain: str) -> dict[str, Any]:
        """Telegram measures entity offsets in UTF-16 code units."""
        out: dict[str, Any] = {
            "type": self.type,
            "offset": utf16_len(plain[: self.offset]),
            "length": utf16_len(plain[self.offset : self.offset + self.length]),
        }
        if self.url is not None:
            out["url"] = self.url
        if self.language is not None:
            out["language"] = self.language
        return out


@dataclass(frozen=True, slots=True)
class Parsed:
    """The outcome of parsing: what the user sees, its entities and a safe HTML rendering."""

    plain: str
    entities: tuple[Entity, ...] = ()
    safe_html: str = ""

    def api_entities(self) -> list[dict[str, Any]]:
        return [e.to_api(self.plain) for e in self.entities if e.length > 0]


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8", "surrogatepass"))


_SAFE_URL = re.compile(r"^(https?|tg)://", re.IGNORECASE)

_RENDER_TAGS = {
    "bold": "b",
    "italic": "i",
    "underline": "u",
    "strikethrough": "s",
    "spoiler": "span",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "expandable_blockquote": "blockquote",
}


def _open_html(entity_type: str, url: str | None) -> str:
    if entity_type == "text_link":
        if url and _SAFE_URL.match(url):
            href = html.escape(url, quote=True)
            return f'<a href="{href}" target="_blank" rel="noopener noreferrer">'
        return "<a>"
    tag = _RENDER_TAGS.get(entity_type)
    if tag is None:
        return "<span>"
    if entity_type == "spoiler":
        return '<span class="spoiler">'
    return f"<{tag}>"


def _close_html(entity_type: str) -> str:
    if entity_type == "text_link":
        return "</a>"
    return f"</{_RENDER_TAGS.get(entity_type, 'span')}>"


@dataclass
class _Open:
    type: str
    start: int
    source_pos: int
    name: str = ""
    url: str | None = None
    language: str | None = None


@dataclass
class _Builder:
    plain: list[str] = field(default_factory=list)
    size: int = 0
    entities: list[Entity] = field(default_factory=list)
    out: list[str] = field(default_factory=list)

    def text(self, chunk: str) -> None:
        self.plain.append(chunk)
        self.size += len(chunk)
        self.out.append(html.escape(chunk, quote=False))

    def open(self, item: _Open) -> None:
        item.start = self.size
        self.out.append(_open_html(item.type, item.url))

    def close(self, item: _Open) -> None:
        self.entities.append(
            Entity(item.type, item.start, self.size - item.start, item.url, item.language)
        )
        self.out.append(_close_html(item.type))

    def result(self) -> Parsed:
        entities = sorted(self.entities, key=lambda e: (e.offset, -e.length))
        return Parsed("".join(self.plain), tuple(entities), "".join(self.out))


# --- HTML -------------------------------------------------------------------------------------

_HTML_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_TAG_NAME = re.compile(r"[A-Za-z0-9-]*")
_ATTR = re.compile(r"""\s*([A-Za-z0-9_-]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+)))?""")
_HTML_ENTITY = re.compile(r"&(#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|lt|gt|amp|quot);")


def _decode_entity(match: re.Match[str]) -> str | None:
    body = match.group(1)
    named = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
    if body in named:
        return named[body]
    code = int(body[2:], 16) if body[1:2] in ("x", "X") else int(body[1:])
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code)


def _parse_attrs(raw: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        match = _ATTR.match(raw, pos)
        if match is None or match.end() == pos:
            break
        value = next((g for g in match.groups()[1:] if g is not None), "")
        attrs[match.group(1).lower()] = html.unescape(value)
        pos = match.end()
    return attrs


def _parse_html(text: str) -> Parsed:
    b = _Builder()
    stack: list[_Open] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "&":
            match = _HTML_ENTITY.match(text, i)
            decoded = _decode_entity(match) if match else None
            if match and decoded is not None:
                b.text(decoded)
                i = match.end()
            else:
                b.text("&")
                i += 1
            continue
        if c != "<":
            j = i
            while j < n and text[j] not in "<&":
                j += 1
            b.text(text[i:j])
            i = j
            continue
        begin = i
        end = text.find(">", i)
        if end == -1:
            raise EntityParseError(f"Unclosed start tag at byte offset {_byte_offset(text, begin)}")
        if text.startswith("</", i):
            name = text[i + 2 : end].strip().lower()
            if not stack:
                raise EntityParseError(
                    f"Unexpected end tag at byte offset {_byte_offset(text, begin)}"
                )
            top = stack.pop()
            if name != top.name:
                raise EntityParseError(
                    f"Unmatched end tag at byte offset {_byte_offset(text, begin)}, "
                    f'expected "</{top.name}>", found "</{name}>"'
                )
            if top.type != "custom_emoji":
                b.close(top)
            i = end + 1
            continue
        name_match = _TAG_NAME.match(text, i + 1)
        name = name_match.group(0).lower() if name_match else ""
        entity_type = _HTML_TAGS.get(name)
        if entity_type is None:
            raise EntityParseError(
                f'Unsupported start tag "{name}" at byte offset {_byte_offset(text, begin)}'
            )
        attrs = _parse_attrs(text[i + 1 + len(name) : end].rstrip("/"))
        item = _Open(entity_type, 0, begin, name)
        if name == "span" and attrs.get("class") != "tg-spoiler":
            offset = _byte_offset(text, begin)
            raise EntityParseError(
                f'Tag "span" must have class "tg-spoiler" at byte offset {offset}'
            )
        if name == "a":
            item.url = attrs.get("href", "")
        if name == "blockquote" and "expandable" in attrs:
            item.type = "expandable_blockquote"
        if name == "code" and stack and stack[-1].type == "pre":
            language = attrs.get("class", "")
            if language.startswith("language-"):
                stack[-1].language = language[len("language-") :]
        stack.append(item)
        if entity_type != "custom_emoji":
            b.open(item)
        i = end + 1
    if stack:
        raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"')
    return b.result()


# --- MarkdownV2 -------------------------------------------------------------------------------

_MDV2_RESERVED = set("_*[]()~`>#+-=|{}.!")
_MDV2_NAMES = {
    "bold": "Bold",
    "italic": "Italic",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "code": "Code",
    "pre": "Pre",
    "text_link": "TextUrl",
}
_MDV2_MARKERS = {
    "bold": "*",
    "italic": "_",
    "underline": "__",
    "strikethrough": "~",
    "spoiler": "||",
    "code": "`",
    "pre": "```",
}


def _parse_markdown_v2(text: str) -> Parsed:
    b = _Builder()
    stack: list[_Open] = []
    i = 0
    n = len(text)
    line_start = True
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and 0 < ord(text[i + 1]) <= 126:
            b.text(text[i + 1])
            i += 2
            line_start = False
            continue
        top = stack[-1] if stack else None
        if top is not None and top.type in ("code", "pre"):
            marker = _MDV2_MARKERS[top.type]
            if text.startswith(marker, i):
                stack.pop()
                b.close(top)
                i += len(marker)
            else:
                b.text(c)
                i += 1
            continue
        if c not in _MDV2_RESERVED:
            b.text(c)
            line_start = c == "\n"
            i += 1
            continue
        if (
            top is not None
            and top.type in _MDV2_MARKERS
            and text.startswith(_MDV2_MARKERS[top.type], i)
        ):
            stack.pop()
            b.close(top)
            i += len(_MDV2_MARKERS[top.type])
            line_start = False
            continue
        if c == "]" and any(item.type == "text_link" for item in stack):
            item = stack.pop()
            if item.type != "text_link":
                raise EntityParseError(
                    f"Can't find end of {_MDV2_NAMES[item.type]} entity at byte offset "
                    f"{_byte_offset(text, item.source_pos)}"
                )
            i += 1
            if i < n and text[i] == "(":
                url_chars: list[str] = []
                i += 1
                while i < n and text[i] != ")":
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                    url_chars.append(text[i])
                    i += 1
                if i >= n:
                    offset = _byte_offset(text, item.source_pos)
                    raise EntityParseError(f"Can't find end of a URL at byte offset {offset}")
                i += 1
                item.url = "".join(url_chars)
            b.close(item)
            line_start = False
            continue
        start = i
        if text.startswith("```", i):
            newline = text.find("\n", i + 3)
            language = text[i + 3 : newline] if newline != -1 else "`"
            if "`" in language or any(ch.isspace() for ch in language):
                item = _Open("pre", 0, start)
                i += 3
            else:
                item = _Open("pre", 0, start, language=language or None)
                i = newline + 1
        elif c == "`":
            item = _Open("code", 0, start)
            i += 1
        elif text.startswith("__", i):
            item = _Open("underline", 0, start)
            i += 2
        elif c == "_":
            item = _Open("italic", 0, start)
            i += 1
        elif c == "*":
            item = _Open("bold", 0, start)
            i += 1
        elif c == "~":
            item = _Open("strikethrough", 0, start)
            i += 1
        elif text.startswith("||", i):
            item = _Open("spoiler", 0, start)
            i += 2
        elif c == "[":
            item = _Open("text_link", 0, start)
            i += 1
        elif c == ">" and line_start:
            i += 1
            continue
        else:
            raise EntityParseError(
                f"Character '{c}' is reserved and must be escaped with the preceding '\\'"
            )
        stack.append(item)
        b.open(item)
        line_start = False
    if stack:
        item = stack[-1]
        raise EntityParseError(
            f"Can't find end of {_MDV2_NAMES[item.type]} entity at byte offset "
            f"{_byte_offset(text, item.source_pos)}"
        )
    return b.result()


# --- legacy Markdown --------------------------------------------------------------------------

_LEGACY = {"*": "bold", "_": "italic", "`": "code"}


def _parse_markdown(text: str) -> Parsed:
    b = _Builder()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "_*`[":
            b.text(text[i + 1])
            i += 2
            continue
        marker = "```" if text.startswith("```", i) else c
        if marker in _LEGACY or marker == "```":
            end = text.find(marker, i + len(marker))
            if end == -1:
                raise EntityParseError(
                    f"Can't find end of the entity starting at byte offset {_byte_offset(text, i)}"
                )
            item = _Open("pre" if marker == "```" else _LEGACY[marker], 0, i)
            b.open(item)
            b.text(text[i + len(marker) : end])
            b.close(item)
            i = end + len(marker)
            continue
        if c == "[":
            close = text.find("]", i + 1)
            if close == -1:
                raise EntityParseError(
                    f"Can't find end of the entity starting at byte offset {_byte_offset(text, i)}"
                )
            item = _Open("text_link", 0, i)
            if text.startswith("(", close + 1) and (paren := text.find(")", close + 2)) != -1:
                item.url = text[close + 2 : paren]
                after = paren + 1
            else:
                after = close + 1
            b.open(item)
            b.text(text[i + 1 : close])
            b.close(item)
            i = after
            continue
        b.text(c)
        i += 1
    return b.result()


def parse_text(text: str, parse_mode: str | None) -> Parsed:
    """Parse `text` the way Telegram does for `parse_mode` (case-insensitive; None = plain).

    Raises EntityParseError for markup Telegram would refuse and ValueError("unsupported
    parse_mode") for an unknown mode.
    """
    mode = (parse_mode or "").lower()
    if mode == "":
        b = _Builder()
        b.text(text)
        return b.result()
    if mode == "html":
        return _parse_html(text)
    if mode == "markdownv2":
        return _parse_markdown_v2(text)
    if mode == "markdown":
        return _parse_markdown(text)
    raise ValueError("unsupported parse_mode")


_COMMAND = re.compile(r"(?<![^\s])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")


def command_entities(text: str) -> list[dict[str, Any]]:
    """The `bot_command` entities Telegram attaches to a user's message."""
    return [
        {
            "type": "bot_command",
            "offset": utf16_len(text[: m.start()]),
            "length": utf16_len(m.group(0)),
        }
        for m in _COMMAND.finditer(text)
    ]
