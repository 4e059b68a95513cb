"""Timeline charts as PNG, drawn by matplotlib on the server (pages that show them need no JavaScript).

Black and grey on white with markers that differ by shape as well as colour, so that a chart printed in black
and white still reads: one line per series, a filled triangle where a change beyond the smallest detectable
change was flagged (up for a rise, down for a fall)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "D", "^")


@dataclass
class ChartSeries:
    label: str
    dates: list[date]
    values: list[float]
    flagged: list[bool]          # per point: a change into it was flagged


def timeline_png(series: list[ChartSeries], title: str, unit: str, axis: tuple[float, float] | None = None,
                 width_in: float = 6.4, height_in: float = 2.8) -> bytes:
    fig, ax = plt.subplots(figsize=(width_in, height_in), dpi=100)
    try:
        for i, s in enumerate(series):
            ax.plot(s.dates, s.values, LINE_STYLES[i % len(LINE_STYLES)], marker=MARKERS[i % len(MARKERS)],
                    color="black" if i == 0 else "0.35", markersize=5, linewidth=1.4, label=s.label)
            for k, (when, value, flag) in enumerate(zip(s.dates, s.values, s.flagged)):
                if flag:
                    rise = k > 0 and value > s.values[k - 1]
                    ax.plot([when], [value], marker="^" if rise else "v", markersize=11, color="black",
                            markerfacecolor="white", markeredgewidth=1.6)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel(unit, fontsize=9)
        if axis:
            ax.set_ylim(axis[0] - 0.05 * (axis[1] - axis[0]), axis[1] + 0.05 * (axis[1] - axis[0]))
        ax.grid(True, color="0.85", linewidth=0.6)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        ax.tick_params(labelsize=8)
        fig.autofmt_xdate(rotation=30)
        if len(series) > 1:
            ax.legend(fontsize=8, frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
