"""Appointment slips (预约单): one per appointment, with a Code128 barcode of the appointment
number, the time, the place and the preparation — as a PDF (A6, one slip per page, for the ward
and desk printers) and as SVG barcodes for the printable page. Pure: data in, bytes out.

Chinese text uses the PDF standard CID font STSong-Light (Adobe-GB1): nothing is embedded, every
PDF reader in China has it or substitutes it."""

from __future__ import annotations

import io
from datetime import datetime

import msgspec
from reportlab.graphics import renderSVG
from reportlab.graphics.barcode import code128, createBarcodeDrawing
from reportlab.lib.pagesizes import A6
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

FONT = "STSong-Light"
pdfmetrics.registerFont(UnicodeCIDFont(FONT))


class Slip(msgspec.Struct, frozen=True):
    number: str  # the appointment number the barcode carries
    hospital: str
    patient: str  # masked name and card number: a slip gets lost, left on a counter...
    exam_name: str
    starts_at: datetime  # in the hospital's zone
    ends_at: datetime
    place: str  # room and where it is
    preparation: str
    notice: str = "请提前15分钟到达，在自助机或分诊台扫码签到。如需改约或取消，请至少提前一天办理。"


def appointment_number(appointment_id: int) -> str:
    """What the barcode carries: 'A' and ten digits (Code128 set B)."""
    return f"A{appointment_id:010d}"


def _barcode(number: str) -> code128.Code128:
    return code128.Code128(number, barHeight=14 * mm, barWidth=0.33 * mm, humanReadable=True, quiet=True)


def barcode_svg(number: str) -> str:
    drawing = createBarcodeDrawing(
        "Code128", value=number, barHeight=14 * mm, barWidth=0.33 * mm, humanReadable=True, quiet=True
    )
    svg: str = renderSVG.drawToString(drawing)
    return svg[svg.find("<svg") :]  # the fragment only, to place inside the page


_NO_LINE_START = "，。、；：！？）》」』”’,.;:!?)"


def _wrap(text: str, width: float, size: float) -> list[str]:
    """Break `text` into lines of at most `width`; a closing punctuation mark never starts a line."""
    lines: list[str] = []
    line = ""
    for ch in text:
        if pdfmetrics.stringWidth(line + ch, FONT, size) > width and ch not in _NO_LINE_START:
            lines.append(line)
            line = ""
        line += ch
    if line:
        lines.append(line)
    return lines


def slips_pdf(slips: list[Slip]) -> bytes:
    buf = io.BytesIO()
    page_w, page_h = A6
    c = canvas.Canvas(buf, pagesize=A6)
    c.setTitle("检查预约单")
    margin = 8 * mm
    width = page_w - 2 * margin
    for slip in slips:
        y = page_h - margin - 5 * mm
        c.setFont(FONT, 12)
        c.drawCentredString(page_w / 2, y, slip.hospital)
        y -= 6 * mm
        c.setFont(FONT, 15)
        c.drawCentredString(page_w / 2, y, "检查预约单")
        y -= 4 * mm
        bar = _barcode(slip.number)
        bar.drawOn(c, (page_w - bar.width) / 2, y - bar.height)
        y -= bar.height + 10 * mm  # the digits print under the bars
        day = f"{slip.starts_at:%Y年%m月%d日} {slip.starts_at:%H:%M}–{slip.ends_at:%H:%M}"
        for label, value, size in (
            ("患者", slip.patient, 10),
            ("检查", slip.exam_name, 11),
            ("时间", day, 11),
            ("地点", slip.place, 10),
        ):
            c.setFont(FONT, size)
            for n, text in enumerate(_wrap(value, width - 12 * mm, size)):
                if n == 0:
                    c.drawString(margin, y, f"{label}：")
                c.drawString(margin + 12 * mm, y, text)
                y -= size + 3
        y -= 2
        c.setFont(FONT, 8.5)
        for text in _wrap("检查前准备：" + (slip.preparation or "无特殊准备。"), width, 8.5) + _wrap(
            slip.notice, width, 8.5
        ):
            if y < margin:
                break
            c.drawString(margin, y, text)
            y -= 11
        c.showPage()
    c.save()
    return buf.getvalue()
