"""The PDF report of one run: A4, black text on white (readable when printed in black and white), with the
scan and its overlays, the findings in words and numbers, the tables the task has (per joint, per structure),
the models that produced them (id, version, checksum), the reviewers' verdicts, the time and the user, and on
every page the notice that it is for research and education only.

Laid out with ReportLab's platypus (flowing paragraphs, tables and images with page breaks), the maintained
library made for this; one page for the run, then at most one page per model for a single image: a model's
section is kept on one page and its pictures shrink to fit it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.platypus import (Image, KeepInFrame, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table,
                                TableStyle)
from xml.sax.saxutils import escape

NOTICE = "Research and education use only, not for clinical decisions."
PAGE_W, PAGE_H = A4
MARGIN = 16 * mm
FRAME_W = PAGE_W - 2 * MARGIN
FRAME_H = PAGE_H - 2 * MARGIN - 10 * mm      # room for the footer


@dataclass
class Picture:
    path: Path
    caption: str


@dataclass
class TableData:
    title: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class ModelSection:
    title: str                       # e.g. "Classifier: Attention dual-head classifier"
    model_id: str
    version: str
    sha256: str
    lines: list[tuple[str, str]]     # findings: label, value in words and numbers
    notes: list[str] = field(default_factory=list)      # withheld answers, warnings, in words
    tables: list[TableData] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)


@dataclass
class Report:
    run_id: str
    task_title: str
    status: str
    user: str
    created_at: datetime | None
    finished_at: datetime | None
    generated_at: datetime
    facts: list[tuple[str, str]]                 # the input and options (no identifiers)
    headline: str
    run_notes: list[str] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)        # the scan as analysed, run-level overlays
    models: list[ModelSection] = field(default_factory=list)
    reviews: list[tuple[str, str, str, str]] = field(default_factory=list)   # when, reviewer, verdict, comment
    review_summary: list[str] = field(default_factory=list)


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=base["BodyText"], fontName="Helvetica", fontSize=9.5, leading=12.5,
                          alignment=TA_LEFT, textColor=colors.black)
    return {
        "title": ParagraphStyle("title", parent=body, fontName="Helvetica-Bold", fontSize=16, leading=20,
                                spaceAfter=2 * mm),
        "h2": ParagraphStyle("h2", parent=body, fontName="Helvetica-Bold", fontSize=12, leading=15,
                             spaceBefore=3 * mm, spaceAfter=1.5 * mm),
        "h3": ParagraphStyle("h3", parent=body, fontName="Helvetica-Bold", fontSize=10, leading=13,
                             spaceBefore=2 * mm, spaceAfter=1 * mm),
        "body": body,
        "small": ParagraphStyle("small", parent=body, fontSize=8, leading=10),
        "mono": ParagraphStyle("mono", parent=body, fontName="Courier", fontSize=7.5, leading=9.5),
        "notice": ParagraphStyle("notice", parent=body, fontName="Helvetica-Bold", fontSize=9.5, leading=12,
                                 borderColor=colors.black, borderWidth=0.8, borderPadding=4, spaceBefore=2 * mm,
                                 spaceAfter=3 * mm),
        "cell": ParagraphStyle("cell", parent=body, fontSize=8.5, leading=10.5),
    }


def _p(text: str, style: ParagraphStyle) -> Paragraph:
    return Paragraph(escape(str(text)), style)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def _facts_table(rows: list[tuple[str, str]], s: dict[str, ParagraphStyle]) -> Table:
    table = Table([[_p(k, s["cell"]), _p(v, s["cell"])] for k, v in rows], colWidths=[52 * mm, FRAME_W - 52 * mm])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("FONTNAME", (0, 0), (0, -1), "Helvetica-Bold"),
                               ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.grey),
                               ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
    return table


def _data_table(data: TableData, s: dict[str, ParagraphStyle]) -> list:
    head = [_p(h, s["cell"]) for h in data.header]
    body = [[_p(c, s["cell"]) for c in row] for row in data.rows]
    table = Table([head] + body, repeatRows=1, colWidths=[FRAME_W / len(data.header)] * len(data.header))
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.black),
                               ("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.88, 0.88, 0.88)),
                               ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("TOPPADDING", (0, 0), (-1, -1), 1.2), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.2)]))
    return [_p(data.title, s["h3"]), table]


def _picture_grid(pictures: list[Picture], s: dict[str, ParagraphStyle], per_row: int, max_h: float) -> list:
    cells = []
    width = (FRAME_W - (per_row - 1) * 4 * mm) / per_row
    for pic in pictures:
        if not pic.path.is_file():
            continue
        w_px, h_px = ImageReader(str(pic.path)).getSize()
        scale = min(width / w_px, max_h / h_px)
        cells.append([Image(str(pic.path), width=w_px * scale, height=h_px * scale), _p(pic.caption, s["small"])])
    if not cells:
        return []
    rows = [cells[i:i + per_row] for i in range(0, len(cells), per_row)]
    grid = [row + [""] * (per_row - len(row)) for row in rows]
    table = Table(grid, colWidths=[width + 4 * mm] * per_row)
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 3)]))
    return [table]


def _footer(report: Report):
    def draw(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica-Bold", 8)
        canvas.drawString(MARGIN, 10 * mm, NOTICE)
        canvas.setFont("Helvetica", 8)
        canvas.drawRightString(PAGE_W - MARGIN, 10 * mm, f"JointScan run {report.run_id[:8]} - page {doc.page}")
        canvas.restoreState()
    return draw


def render(report: Report) -> bytes:
    """The report as PDF bytes."""
    s = _styles()
    story: list = [_p(f"JointScan report: {report.task_title}", s["title"]), _p(NOTICE, s["notice"])]
    story.append(_facts_table([("Run", report.run_id), ("Status", report.status), ("Analysed for", report.user),
                               ("Uploaded", _when(report.created_at)), ("Finished", _when(report.finished_at)),
                               ("Report made", _when(report.generated_at))] + report.facts, s))
    story += [_p("Findings", s["h2"]), _p(report.headline or "-", s["body"])]
    story += [_p(note, s["body"]) for note in report.run_notes]
    story += _picture_grid(report.pictures, s, per_row=2, max_h=80 * mm)
    if report.reviews or report.review_summary:
        story.append(_p("Reviewers", s["h2"]))
        story += [_p(line, s["body"]) for line in report.review_summary]
        if report.reviews:
            story += _data_table(TableData("Verdicts", ["When", "Reviewer", "Verdict", "Comment"],
                                           [list(r) for r in report.reviews]), s)
    for section in report.models:
        block: list = [_p(section.title, s["h2"]),
                       _p(f"Model {section.model_id}, version {section.version}", s["body"]),
                       _p(f"sha256 {section.sha256}", s["mono"]), Spacer(1, 1.5 * mm)]
        if section.lines:
            block.append(_facts_table(section.lines, s))
        block += [_p(note, s["body"]) for note in section.notes]
        for table in section.tables:
            block += _data_table(table, s)
        block += _picture_grid(section.pictures, s, per_row=3, max_h=55 * mm)
        # One page per model: the section shrinks (pictures and all) rather than run onto a second page.
        story += [PageBreak(), KeepInFrame(FRAME_W, FRAME_H, block, mode="shrink")]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                            bottomMargin=MARGIN + 8 * mm, title=f"JointScan report {report.run_id[:8]}",
                            author="JointScan", subject=report.task_title, creator="JointScan")
    footer = _footer(report)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
