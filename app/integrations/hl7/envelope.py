"""The envelope of an inbound HL7 v2 message: its character set, its MSH, and its segments.

Pure. The character set comes from MSH-18, found at byte level before anything is decoded: the
header fields up to MSH-18 are ASCII in practice, and parse.py checks that the decoded header names
the same character set (a multi-byte character before MSH-18 whose trailing byte looks like a
delimiter would otherwise go unnoticed). hl7apy splits the segments, fields and repetitions (tolerant
validation, no groups: the segments in message order); the components of a field are read by
position, so HL7 versions 2.3 to 2.6 read alike. Problems raise `Rejection`, which says why in
Chinese and English with the HL7 error code of table 0357.
"""

from __future__ import annotations

import re

import msgspec
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, UnsupportedVersion
from hl7apy.parser import parse_message

from app.integrations.hl7.charsets import CHARSETS

NULL = '""'  # HL7's explicit "delete this value"


class Rejection(Exception):
    """The message cannot be applied. `ack_code` AR: not processed (unreadable, unsupported,
    transient); AE: processed and refused for its content. `error_code` is from HL7 table 0357."""

    def __init__(
        self,
        ack_code: str,
        error_code: int,
        zh: str,
        en: str,
        *,
        segment: str = "",
        field: int = 0,
        header: Header | None = None,
    ) -> None:
        super().__init__(f"{error_code} {en}")
        self.ack_code = ack_code
        self.error_code = error_code
        self.zh = zh
        self.en = en
        self.segment = segment
        self.field = field
        self.header = header

    @property
    def text(self) -> str:
        return f"{self.zh} / {self.en}"


class Header(msgspec.Struct, frozen=True):
    encoding_chars: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_code: str = ""
    trigger: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = ""
    charset_label: str = ""  # MSH-18 as sent
    codec: str = "utf-8"

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger}" if self.trigger else self.message_code


# -- header, at byte level -----------------------------------------------------------------------


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip()


def sniff_header(raw: bytes, default_codec: str = "utf-8") -> Header:
    """MSH read without decoding the message: the character set must be known first."""
    raw = raw.removeprefix(b"\xef\xbb\xbf").lstrip(b"\r\n\t ")
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise Rejection("AR", 100, "消息不以MSH段开头", "message does not start with an MSH segment", segment="MSH")
    sep = raw[3:4]
    first = re.split(rb"[\r\n]", raw, maxsplit=1)[0]
    fields = first.split(sep)  # fields[n - 1] is MSH-n (MSH-1 is the separator itself)

    def component(n: int, index: int) -> str:
        value = fields[n - 1] if len(fields) >= n else b""
        parts = value.split(b"^")
        return _text(parts[index - 1]) if len(parts) >= index else ""

    label = _text(fields[17].split(b"~")[0]) if len(fields) >= 18 else ""
    header = Header(
        encoding_chars=_text(fields[1]) if len(fields) > 1 else "^~\\&",
        sending_application=component(3, 1),
        sending_facility=component(4, 1),
        receiving_application=component(5, 1),
        receiving_facility=component(6, 1),
        message_code=component(9, 1),
        trigger=component(9, 2),
        control_id=_text(fields[9]) if len(fields) > 9 else "",
        processing_id=component(11, 1) or "P",
        version=component(12, 1),
        charset_label=label,
        codec=default_codec,
    )
    if label:
        codec = CHARSETS.get(label.upper())
        if codec is None:
            raise Rejection(
                "AR",
                102,
                f"不支持的字符集：{label[:40]}",
                f"unsupported character set in MSH-18: {label[:40]!r}",
                segment="MSH",
                field=18,
                header=header,
            )
        header = msgspec.structs.replace(header, codec=codec)
    return header


def decode(raw: bytes, header: Header) -> str:
    """The message as text, segments separated by CR (LF and CRLF are accepted too)."""
    raw = raw.removeprefix(b"\xef\xbb\xbf").lstrip(b"\r\n\t ")
    try:
        text = raw.decode(header.codec)
    except UnicodeDecodeError as exc:
        raise Rejection(
            "AR",
            102,
            f"消息内容不是有效的{header.charset_label or header.codec}编码",
            f"message bytes are not valid {header.codec} (offset {exc.start})",
            segment="MSH",
            field=18,
            header=header,
        ) from exc
    segments = [s for s in re.split(r"\r\n|\n|\r", text) if s.strip()]
    return "\r".join(segments)


# -- fields by position --------------------------------------------------------------------------


class Separators(msgspec.Struct, frozen=True):
    component: str
    repetition: str
    escape: str
    subcomponent: str


def separators(encoding_chars: str) -> Separators:
    chars = (encoding_chars + "^~\\&")[:4] if len(encoding_chars) < 4 else encoding_chars
    return Separators(chars[0], chars[1], chars[2], chars[3])


def unescape(value: str, seps: Separators) -> str:
    """HL7 escape sequences: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ and \\.br\\ (line break); others are dropped."""
    e = seps.escape
    if e not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == e:
            end = value.find(e, i + 1)
            if end == -1:
                out.append(value[i:])
                break
            code = value[i + 1 : end]
            out.append(
                {"F": "|", "S": seps.component, "T": seps.subcomponent, "R": seps.repetition, "E": e, ".br": "\n"}.get(
                    code, ""
                )
            )
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


class Segment:
    """One parsed segment: its fields' repetitions as ER7 text, read by position."""

    def __init__(self, name: str, fields: dict[int, list[str]], seps: Separators) -> None:
        self.name = name
        self._fields = fields
        self._seps = seps

    def repetitions(self, n: int) -> list[str]:
        return self._fields.get(n, [])

    def raw(self, n: int, rep: int = 0) -> str:
        reps = self._fields.get(n, [])
        return reps[rep] if len(reps) > rep else ""

    def get(self, n: int, component: int = 1, sub: int = 1, rep: int = 0) -> str:
        return self.component_of(self.raw(n, rep), component, sub)

    def component_of(self, value: str, component: int = 1, sub: int = 1) -> str:
        if value == NULL:
            return NULL
        parts = value.split(self._seps.component)
        if len(parts) < component:
            return ""
        subs = parts[component - 1].split(self._seps.subcomponent)
        return unescape(subs[sub - 1], self._seps).strip() if len(subs) >= sub else ""


def read_segments(text: str, header: Header) -> list[Segment]:
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    except UnsupportedVersion as exc:
        raise Rejection(
            "AR",
            203,
            f"不支持的HL7版本：{header.version[:10] or '(空)'}",
            f"unsupported HL7 version in MSH-12: {header.version[:10]!r}",
            segment="MSH",
            field=12,
            header=header,
        ) from exc
    except (HL7apyException, ValueError, IndexError, KeyError, TypeError) as exc:
        raise Rejection(
            "AR",
            100,
            "消息结构无法解析",
            f"message structure cannot be parsed ({type(exc).__name__})",
            header=header,
        ) from exc
    seps = separators(header.encoding_chars)
    out: list[Segment] = []
    for segment in message.children:
        fields: dict[int, list[str]] = {}
        for field in segment.children:
            try:
                n = int(str(field.name).rsplit("_", 1)[1])
            except (IndexError, ValueError):
                continue
            fields.setdefault(n, []).append(str(field.to_er7()))
        out.append(Segment(str(segment.name), fields, seps))
    return out
