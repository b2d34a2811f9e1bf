"""The character sets an inbound HL7 message may declare (no dependencies: the settings read it)."""

from __future__ import annotations

# MSH-18 (HL7 table 0211 and what Chinese HIS vendors actually send) -> Python codec.
CHARSETS: dict[str, str] = {
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "GB18030": "gb18030",
    "GB 18030-2000": "gb18030",
    "GB18030-2000": "gb18030",
    "GB 18030-2005": "gb18030",
    "GB18030-2005": "gb18030",
    # GBK and GB 2312 are subsets of GB 18030: read them with it.
    "GBK": "gb18030",
    "GB2312": "gb18030",
    "GB 2312": "gb18030",
    "ASCII": "ascii",
    "8859/1": "latin-1",
}
