"""Small SVG charts (bars, lines, points, a dashed level, tick marks, a legend) without a plotting library.

The HTML report draws its histogram, sweep and score plots with these, so that it needs neither matplotlib
(about 60 MB with its dependencies) nor a font file: the browser sets the text. :meth:`Chart.svg` returns a
standalone SVG document; coordinates are data units, mapped linearly into the plot area.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'


def nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi], about ``target`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9)
    count = math.floor(hi / step + 1e-9) - first + 1
    return [round((first + i) * step, 12) for i in range(count)]


def _label(value: float) -> str:
    return f"{value:.10g}"


class Chart:
    """One plot area with axes; add marks, then :meth:`svg`. Sizes are pixels."""

    def __init__(self, width: int, height: int, xlim: tuple[float, float], ylim: tuple[float, float],
                 xlabel: str = "", ylabel: str = "", margins: tuple[int, int, int, int] = (52, 12, 10, 38),
                 integer_y: bool = False) -> None:
        """``margins``: left, right, top, bottom, around the plot area; a right margin of 120 px or more
        holds the legend, else it sits in the plot's top left corner."""
        self.width, self.height = width, height
        self.xlim, self.ylim = xlim, ylim
        self.left, self.right, self.top, self.bottom = margins
        self.xlabel, self.ylabel = xlabel, ylabel
        self.integer_y = integer_y
        self.marks: list[str] = []
        self.legend: list[tuple[str, str]] = []  # (label, SVG of its key drawn at 0, 0)

    def x(self, value: float) -> float:
        lo, hi = self.xlim
        return self.left + (value - lo) / ((hi - lo) or 1.0) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        lo, hi = self.ylim
        return self.height - self.bottom - (value - lo) / ((hi - lo) or 1.0) * (self.height - self.top - self.bottom)

    def bars(self, edges: Sequence[float], heights: Sequence[float], colour: str) -> None:
        """Histogram bars: bar i spans edges[i] to edges[i + 1] (white gaps between them)."""
        for a, b, h in zip(edges[:-1], edges[1:], heights, strict=True):
            if h > 0:
                x0, x1, top = self.x(a), self.x(b), self.y(h)
                self.marks.append(f'<rect x="{x0:.1f}" y="{top:.1f}" width="{x1 - x0:.1f}" '
                                  f'height="{self.y(self.ylim[0]) - top:.1f}" fill="{colour}" stroke="white"/>')

    def line(self, xs: Sequence[float], ys: Sequence[float], colour: str, label: str | None = None,
             markers: bool = True) -> None:
        """A polyline through the points, with round markers."""
        points = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in zip(xs, ys, strict=True))
        self.marks.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        if markers:
            self.points(xs, ys, colour, radius=3.0)
        if label:
            self.legend.append((label, f'<line x1="0" y1="0" x2="16" y2="0" stroke="{colour}" stroke-width="1.5"/>'
                                       f'<circle cx="8" cy="0" r="3" fill="{colour}"/>'))

    def points(self, xs: Sequence[float], ys: Sequence[float], colour: str, label: str | None = None,
               radius: float = 2.0) -> None:
        self.marks.extend(f'<circle cx="{self.x(a):.1f}" cy="{self.y(b):.1f}" r="{radius}" fill="{colour}"/>'
                          for a, b in zip(xs, ys, strict=True))
        if label:
            self.legend.append((label, f'<circle cx="8" cy="0" r="{radius + 0.5}" fill="{colour}"/>'))

    def level(self, value: float, colour: str, label: str | None = None) -> None:
        """A dashed horizontal line across the plot at y = ``value``."""
        y = self.y(value)
        self.marks.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.width - self.right}" y2="{y:.1f}" '
                          f'stroke="{colour}" stroke-dasharray="5,3"/>')
        if label:
            self.legend.append((label, f'<line x1="0" y1="0" x2="16" y2="0" stroke="{colour}" '
                                       'stroke-dasharray="5,3"/>'))

    def ticks(self, xs: Sequence[float], colour: str, label: str | None = None, at: float = 0.07) -> None:
        """Short vertical marks at ``xs``, ``at`` of the plot height above its bottom (e.g. the kept slices)."""
        y = self.height - self.bottom - at * (self.height - self.top - self.bottom)
        self.marks.extend(f'<line x1="{self.x(a):.1f}" y1="{y - 4:.1f}" x2="{self.x(a):.1f}" y2="{y + 4:.1f}" '
                          f'stroke="{colour}" stroke-width="1.5"/>' for a in xs)
        if label:
            self.legend.append((label, f'<line x1="8" y1="-4" x2="8" y2="4" stroke="{colour}" stroke-width="1.5"/>'))

    def _axes(self) -> list[str]:
        left, right = self.left, self.width - self.right
        top, bottom = self.top, self.height - self.bottom
        out = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" '
               'stroke="#444"/>']
        for value in nice_ticks(*self.xlim):
            x = self.x(value)
            out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#444"/>'
                       f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{_label(value)}</text>')
        for value in nice_ticks(*self.ylim, integer=self.integer_y):
            y = self.y(value)
            out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#444"/>'
                       f'<text x="{left - 6}" y="{y + 3.5:.1f}" text-anchor="end">{_label(value)}</text>')
        if self.xlabel:
            out.append(f'<text x="{(left + right) / 2:.1f}" y="{self.height - 6}" text-anchor="middle" '
                       f'font-size="11">{escape(self.xlabel)}</text>')
        if self.ylabel:
            middle = (top + bottom) / 2
            out.append(f'<text transform="translate(13,{middle:.1f}) rotate(-90)" text-anchor="middle" '
                       f'font-size="11">{escape(self.ylabel)}</text>')
        return out

    def _legend(self) -> list[str]:
        x0 = self.width - self.right + 8 if self.right >= 120 else self.left + 8
        out = []
        for i, (label, key) in enumerate(self.legend):
            y = self.top + 10 + 15 * i
            out.append(f'<g transform="translate({x0},{y})">{key}'
                       f'<text x="22" y="3.5">{escape(label)}</text></g>')
        return out

    def svg(self) -> str:
        """The chart as a standalone SVG document."""
        x0, x1 = self.left, self.width - self.right
        y0, y1 = self.top, self.height - self.bottom
        clip = (f'<clipPath id="plot"><rect x="{x0}" y="{y0 - 4}" width="{x1 - x0}" '
                f'height="{y1 - y0 + 4}"/></clipPath>')
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" {FONT} font-size="10" fill="#222">'
                f'<rect width="100%" height="100%" fill="white"/><defs>{clip}</defs>'
                f'<g clip-path="url(#plot)">{"".join(self.marks)}</g>'
                + "".join(self._axes()) + "".join(self._legend()) + "</svg>")
