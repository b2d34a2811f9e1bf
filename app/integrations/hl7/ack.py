"""The acknowledgement (ACK) of an inbound message, built with hl7apy. Pure.

Sender and receiver are swapped from the request; MSA-2 echoes its MSH-10; the character set is the
request's (MSH-18 copied, the bytes encoded with the same codec). A refusal carries its reason in
MSA-3 and in an ERR segment: ERR-1 for HL7 2.3 / 2.4 peers, ERR-2/3/4/8 from 2.5 on. The ACK is
written in the request's version when hl7apy knows it well (2.3 to 2.6), else in 2.5.
"""

from __future__ import annotations

from datetime import datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from app.integrations.hl7.parse import Header, Rejection

ACK_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"})
DEFAULT_VERSION = "2.5"
ERROR_NAMES: dict[int, str] = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


def escape(text: str) -> str:
    """ER7 escaping of a text value (hl7apy escapes only the field separator of a string assigned
    to a field: the other delimiters would split it)."""
    text = text.replace("\r", " ").replace("\n", " ")
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def build_ack(
    header: Header | None,
    ack_code: str,
    *,
    message_id: str,
    application: str,
    facility: str,
    now: datetime,
    rejection: Rejection | None = None,
    note: str = "",
) -> str:
    """The ACK as ER7 text (segments separated by CR)."""
    h = header or Header()
    version = h.version if h.version in ACK_VERSIONS else DEFAULT_VERSION
    ack = Message("ACK", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    msh = ack.msh
    msh.msh_3 = escape(h.receiving_application or application)
    msh.msh_4 = escape(h.receiving_facility or facility)
    msh.msh_5 = escape(h.sending_application)
    msh.msh_6 = escape(h.sending_facility)
    msh.msh_7 = now.strftime("%Y%m%d%H%M%S")
    msh.msh_9 = f"ACK^{escape(h.trigger)}^ACK" if h.trigger else "ACK"
    msh.msh_10 = escape(message_id)
    msh.msh_11 = escape(h.processing_id or "P")
    if h.charset_label:
        msh.msh_18 = escape(h.charset_label)
    msa = ack.msa
    msa.msa_1 = ack_code
    msa.msa_2 = escape(h.control_id[:199])
    text = rejection.text if rejection is not None else note
    if text:
        msa.msa_3 = escape(text[:80] if version in ("2.3", "2.3.1", "2.4") else text[:199])
    if rejection is not None:
        err = ack.add_segment("ERR")
        name = ERROR_NAMES.get(rejection.error_code, "")
        segment, field = rejection.segment, str(rejection.field or "")
        sequence = "1" if segment else ""
        if version in ("2.3", "2.3.1", "2.4"):
            err.err_1 = f"{segment}^{sequence}^{field}^{rejection.error_code}&{name}&HL70357"
        else:
            if segment:
                err.err_2 = f"{segment}^{sequence}^{field}"
            err.err_3 = f"{rejection.error_code}^{name}^HL70357"
            err.err_4 = "E"
            err.err_8 = escape(rejection.text[:250])
    return str(ack.to_er7())


def encode_ack(text: str, codec: str) -> bytes:
    """The ACK's bytes in the request's character set (a character it cannot hold becomes '?')."""
    return text.encode(codec, errors="replace")
