"""Charts for the privacy report as inline SVG (no plotting library, no external assets)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Colour-blind-safe palette (Okabe & Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def _nice_ceiling(value: float) -> float:
    """A round number >= ``value`` for the top of an axis."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _marker(shape: int, cx: float, cy: float, size: float, colour: str, title: str) -> str:
    """A marker of one of four shapes (circle, square, triangle, diamond) with a tooltip."""
    tip = f"<title>{title}</title>"
    kind = shape % 4
    if kind == 0:
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{size:.1f}" fill="{colour}">{tip}</circle>'
    if kind == 1:
        return (
            f'<rect x="{cx - size:.1f}" y="{cy - size:.1f}" width="{2 * size:.1f}" '
            f'height="{2 * size:.1f}" fill="{colour}">{tip}</rect>'
        )
    if kind == 2:
        corners = [
            (cx, cy - 1.2 * size),
            (cx - size, cy + 0.8 * size),
            (cx + size, cy + 0.8 * size),
        ]
    else:
        corners = [(cx, cy - 1.3 * size), (cx + size, cy), (cx, cy + 1.3 * size), (cx - size, cy)]
    points = " ".join(f"{px:.1f},{py:.1f}" for px, py in corners)
    return f'<polygon points="{points}" fill="{colour}">{tip}</polygon>'


def coinciding_series(series: Mapping[str, Sequence[tuple[str, float]]]) -> list[list[str]]:
    """Groups of two or more branches whose cumulative epsilons are the same at every charge."""
    groups: dict[tuple[float, ...], list[str]] = {}
    for branch, points in sorted(series.items()):
        if points:
            groups.setdefault(tuple(round(e, 9) for _, e in points), []).append(branch)
    return [names for names in groups.values() if len(names) > 1]


@dataclass(frozen=True)
class _Plot:
    """The plot area of a chart (SVG units) and its scales from data to SVG coordinates."""

    left: int
    top: int
    plot_w: int
    plot_h: int
    x_max: int
    y_max: float

    @property
    def legend_x(self) -> int:
        """Left edge of the legend, right of the plot area."""
        return self.left + self.plot_w + 12

    def x(self, i: float) -> float:
        """Horizontal position of the ``i``-th charge (from 0)."""
        return self.left + self.plot_w * i / self.x_max

    def y(self, e: float) -> float:
        """Vertical position of epsilon ``e``."""
        return self.top + self.plot_h * (1 - e / self.y_max)


def _axes_svg(p: _Plot, height: int) -> list[str]:
    """Grid lines with their epsilon, the charge numbers and the two axis titles."""
    left, top, plot_w, plot_h, x_max, y_max = p.left, p.top, p.plot_w, p.plot_h, p.x_max, p.y_max
    out = []
    for k in range(6):
        value = y_max * k / 5
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{p.y(value):.1f}" y2="{p.y(value):.1f}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{left - 6}" y="{p.y(value) + 4:.1f}" text-anchor="end" font-size="11">'
            f"{value:g}</text>"
        )
    for k in range(min(x_max, 10) + 1):
        i = round(x_max * k / min(x_max, 10))
        out.append(
            f'<text x="{p.x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
            f'font-size="11">{i + 1}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" font-size="12">'
        "privacy charge (reservation), in ledger order</text>"
        f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {top + plot_h / 2})">cumulative epsilon</text>'
    )
    return out


def _branch_svg(
    p: _Plot,
    n: int,
    count: int,
    branch: str,
    points: Sequence[tuple[str, float]],
    ceiling: float | None,
) -> list[str]:
    """The ``n``-th of ``count`` branches: its ceiling, line, markers and legend entry."""
    left, top, plot_w, legend_x = p.left, p.top, p.plot_w, p.legend_x
    out = []
    colour = PALETTE[n % len(PALETTE)]
    name = html.escape(branch)
    # Earlier lines wider: one drawn over another leaves the other's colour showing.
    stroke = 1.5 + 3.0 * (count - 1 - n) / max(count - 1, 1)
    size = 2.5 + stroke / 2
    if ceiling is not None:
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{p.y(ceiling):.1f}" '
            f'y2="{p.y(ceiling):.1f}" stroke="{colour}" stroke-dasharray="6 4">'
            f"<title>{name} ceiling {ceiling:g}</title></line>"
        )
    if points:
        path = " ".join(f"{p.x(i):.1f},{p.y(e):.1f}" for i, (_, e) in enumerate(points))
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="{stroke:.1f}" '
            f'stroke-linejoin="round" points="{path}"><title>{name}</title></polyline>'
        )
        for i, (label, e) in enumerate(points):
            tip = f"{name} {html.escape(label)}: epsilon {e:.4g}"
            out.append(_marker(n, p.x(i), p.y(e), size, colour, tip))
    legend_y = top + 14 + 18 * n
    out.append(
        f'<line x1="{legend_x}" x2="{legend_x + 20}" y1="{legend_y - 4}" '
        f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="{stroke:.1f}"/>'
        + _marker(n, legend_x + 10, legend_y - 4, size, colour, name)
        + f'<text x="{legend_x + 26}" y="{legend_y}" font-size="12">{name}</text>'
    )
    return out


def epsilon_chart_svg(
    series: Mapping[str, Sequence[tuple[str, float]]],
    *,
    ceilings: Mapping[str, float | None] | None = None,
    width: int = 760,
    height: int = 320,
) -> str:
    """Cumulative epsilon after each charge in a ledger, one line per branch.

    Lines that coincide stay visible: each branch has its own colour and
    marker shape, and every line is drawn thinner than the one before it, so
    a line on top of another leaves the other's colour around it. Ceilings
    are dashed lines of the branch's colour, named in the legend.

    Parameters
    ----------
    series
        Per branch, ``(label, cumulative epsilon)`` for each charging entry
        (reservation) in ledger order; the label shows as a tooltip.
    ceilings
        Per branch epsilon ceiling.

    Returns
    -------
    str
        An ``<svg>`` element with a text alternative (``<title>``/``<desc>``).
    """
    ceilings = dict(ceilings or {})
    left, right, top, bottom = 56, 150, 16, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    longest = max((len(points) for points in series.values()), default=0)
    highest = max(
        [e for points in series.values() for _, e in points]
        + [c for c in ceilings.values() if c is not None],
        default=0.0,
    )
    p = _Plot(left, top, plot_w, plot_h, max(longest - 1, 1), _nice_ceiling(highest * 1.05))
    out = [
        f'<svg role="img" viewBox="0 0 {width} {height}" '
        f'width="100%" style="max-width:{width}px" aria-labelledby="eps-title eps-desc">',
        '<title id="eps-title">Cumulative epsilon per branch after each privacy charge</title>',
        '<desc id="eps-desc">One line per branch, each with its own colour and marker; '
        "dashed lines are the branch ceilings.</desc>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#999"/>',
        *_axes_svg(p, height),
    ]
    count = len(series)
    for n, (branch, points) in enumerate(sorted(series.items())):
        out.extend(_branch_svg(p, n, count, branch, points, ceilings.get(branch)))
    if any(c is not None for c in ceilings.values()):
        legend_x, legend_y = p.legend_x, top + 14 + 18 * count
        out.append(
            f'<line x1="{legend_x}" x2="{legend_x + 20}" y1="{legend_y - 4}" '
            f'y2="{legend_y - 4}" stroke="#555" stroke-dasharray="6 4" '
            'class="legend-ceiling"/>'
            f'<text x="{legend_x + 26}" y="{legend_y}" font-size="12">ceiling (dashed)</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
