"""A line chart drawn with PIL (the project has no plotting dependency): panels of series."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75))
PANEL_W, PANEL_H, MARGIN = 420, 300, 48

Series = tuple[str, Sequence[float], Sequence[float]]  # (label, x values, y values)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _panel(draw: ImageDraw.ImageDraw, left: int, top: int, title: str, series: list[Series],
           x_label: str, y_label: str) -> None:
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if math.isfinite(y)]
    if not xs or not ys:
        draw.text((left + MARGIN, top + PANEL_H // 2), f"{title}: no data", fill="black")
        return
    x0, x1, y0, y1 = min(xs), max(xs), min(0.0, min(ys)), max(ys) * 1.05
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    w, h = PANEL_W - 2 * MARGIN, PANEL_H - 2 * MARGIN

    def pos(x: float, y: float) -> tuple[float, float]:
        return left + MARGIN + (x - x0) / (x1 - x0) * w, top + MARGIN + h - (y - y0) / (y1 - y0) * h

    draw.rectangle([left + MARGIN, top + MARGIN, left + MARGIN + w, top + MARGIN + h],
                   outline="black")
    draw.text((left + MARGIN, top + 8), title, fill="black")
    draw.text((left + MARGIN + w // 2 - 20, top + PANEL_H - 16), x_label, fill="black")
    draw.text((left + 4, top + 24), y_label, fill="black")
    for y in _ticks(y0, y1):
        px, py = pos(x0, y)
        draw.line([px - 4, py, px, py], fill="black")
        draw.text((left + 2, py - 5), f"{y:g}", fill="black")
    for x in _ticks(x0, x1, 4):
        px, py = pos(x, y0)
        draw.line([px, py, px, py + 4], fill="black")
        draw.text((px - 10, py + 6), f"{x:g}", fill="black")
    for i, (label, sx, sy) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        points = [pos(x, y) for x, y in zip(sx, sy, strict=True) if math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.text((left + MARGIN + 8, top + MARGIN + 6 + 12 * i), label, fill=colour)


def line_panels(panels: list[tuple[str, list[Series]]], path: str | Path, x_label: str,
                y_label: str, columns: int = 2) -> Path:
    """Draws one panel per (title, series) into a PNG grid of `columns` panels per row."""
    rows = max(1, math.ceil(len(panels) / columns))
    image = Image.new("RGB", (columns * PANEL_W, rows * PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    for i, (title, series) in enumerate(panels):
        _panel(draw, (i % columns) * PANEL_W, (i // columns) * PANEL_H, title, series, x_label,
               y_label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
