"""Small SVG plots for the report and the app: histogram, share bar, embedding map, heatmap.
Every value drawn into markup goes through `_e` (HTML escaping)."""

from __future__ import annotations

import html
import json
import math
from typing import Any

from .summary import HIST_BINS

# Colours for auditors in plots: a fixed, colour-blind-friendly cycle (Okabe-Ito + Tableau).
PALETTE = (
    "#d55e00",
    "#0072b2",
    "#009e73",
    "#cc79a7",
    "#e69f00",
    "#56b4e9",
    "#8c564b",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#9467bd",
    "#f0e442",
)
UNFLAGGED = "#c8ccd2"


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3g}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, default=str)[:300]
    return str(v)


def _svg_histogram(h: dict, width: int = 300, height: int = 110) -> str:
    """Score histogram, bins of [0, 1], flagged rows stacked in red; heights on a log scale."""
    fl, un = h.get("flagged", []), h.get("unflagged", [])
    n = len(fl) or HIST_BINS
    tot = [a + b for a, b in zip(fl, un)]
    top = math.log1p(max(tot) if tot and max(tot) > 0 else 1)
    pad_l, pad_b, pad_t = 6, 18, 6
    bw = (width - 2 * pad_l) / n
    ph = height - pad_b - pad_t
    parts = [
        (
            f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            'role="img" aria-label="score histogram">'
        )
    ]
    for i in range(n):
        t = tot[i]
        if t <= 0:
            continue
        hh = ph * math.log1p(t) / top
        hf = hh * (fl[i] / t)
        x = pad_l + i * bw
        y = pad_t + ph - hh
        lo, hi = i / n, (i + 1) / n
        tip = f"score {lo:.2f}-{hi:.2f}: {t:,} rows, {fl[i]:,} flagged"
        parts.append(
            f"<g><title>{_e(tip)}</title>"
            f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" '
            f'height="{hh - hf:.1f}" fill="#9aa5b1"/>'
        )
        if hf > 0:
            parts.append(
                f'<rect x="{x + 0.5:.1f}" y="{y + hh - hf:.1f}" width="{bw - 1:.1f}" '
                f'height="{hf:.1f}" fill="#d55e00"/>'
            )
        parts.append("</g>")
    base = pad_t + ph
    parts.append(f'<line x1="{pad_l}" y1="{base}" x2="{width - pad_l}" y2="{base}" stroke="#555"/>')
    parts.append(
        f'<text x="{pad_l}" y="{height - 4}" class="ax">0 (worse)</text>'
        f'<text x="{width - pad_l}" y="{height - 4}" class="ax" text-anchor="end">1 (better)</text>'
        f'<text x="{width / 2}" y="{height - 4}" class="ax" text-anchor="middle">'
        "score (log count)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _svg_bar(share: float, width: int = 120) -> str:
    w = max(0.0, min(1.0, share or 0.0)) * width
    return (
        f'<svg viewBox="0 0 {width} 10" width="{width}" height="10" class="bar">'
        f'<rect width="{width}" height="10" fill="#e6e8eb"/>'
        f'<rect width="{w:.1f}" height="10" fill="#d55e00"/></svg>'
    )


def _svg_map(m: dict, colours: dict[str, str], size: int = 560) -> str:
    """Scatter of the sampled rows. Each group is one path of zero-length round-capped segments
    (`M x y h0`), which draws a dot per row at a fraction of the bytes of one element per row."""
    pad = 10
    span = size - 2 * pad
    xs, ys, gs = m["x"], m["y"], m["group"]
    by: dict[int, list[str]] = {}
    for x, y, g in zip(xs, ys, gs):
        by.setdefault(g, []).append(f"M{pad + x * span:.1f} {pad + (1 - y) * span:.1f}h0")
    parts = [
        (
            f'<svg class="map" viewBox="0 0 {size} {size}" width="{size}" height="{size}" '
            'role="img" aria-label="embedding map">'
        ),
        f'<rect width="{size}" height="{size}" fill="#fbfbfc" stroke="#ddd"/>',
    ]
    for gi in sorted(by):  # group 0 (not flagged) first, so flags are drawn on top
        name = m["legend"][gi]["group"]
        sw = 3 if name == "not flagged" else 4.5
        parts.append(
            f'<path d="{"".join(by[gi])}" stroke="{colours.get(name, UNFLAGGED)}" '
            f'stroke-width="{sw}" stroke-linecap="round" fill="none" '
            f'data-group="{_e(name)}"><title>{_e(name)}</title></path>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _heat_colour(acc: float | None) -> str:
    if acc is None:
        return "#eeeeee"
    a = max(0.0, min(1.0, float(acc)))
    # red (0) -> amber (0.5) -> green (1)
    hue = 120 * a
    return f"hsl({hue:.0f},65%,{72 - 20 * a:.0f}%)"


def _svg_heatmap(cells: list[dict], row_key: str, col_key: str, title: str) -> str:
    """Group-accuracy heatmap: rows = label, columns = attribute value, fill = accuracy."""
    rows = list(dict.fromkeys(str(c[row_key]) for c in cells))[:20]
    cols = list(dict.fromkeys(str(c[col_key]) for c in cells))[:20]
    if not rows or not cols:
        return ""
    grid = {(str(c[row_key]), str(c[col_key])): c for c in cells}
    cw, ch, left, top = 96, 34, 90, 40
    w, h = left + cw * len(cols) + 10, top + ch * len(rows) + 10
    p = [
        (
            f'<svg class="heat" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
            f'aria-label="{_e(title)}">'
        ),
        f'<text x="{left}" y="14" class="ax">{_e(title)}</text>',
    ]
    for j, c in enumerate(cols):
        p.append(
            f'<text x="{left + j * cw + cw / 2}" y="{top - 6}" class="ax" '
            f'text-anchor="middle">{_e(c[:16])}</text>'
        )
    for i, r in enumerate(rows):
        p.append(
            f'<text x="{left - 6}" y="{top + i * ch + ch / 2 + 4}" class="ax" '
            f'text-anchor="end">{_e(r[:14])}</text>'
        )
        for j, c in enumerate(cols):
            cell = grid.get((r, c), {})
            acc = cell.get("accuracy")
            n = cell.get("count")
            tip = f"{row_key}={r}, {col_key}={c}: count {n}, accuracy {_fmt(acc)}"
            p.append(
                f'<g><title>{_e(tip)}</title><rect x="{left + j * cw}" y="{top + i * ch}" '
                f'width="{cw - 2}" height="{ch - 2}" fill="{_heat_colour(acc)}"/>'
                f'<text x="{left + j * cw + cw / 2 - 1}" y="{top + i * ch + 14}" class="cell" '
                f'text-anchor="middle">{_e(_fmt(acc) if acc is not None else "-")}</text>'
                f'<text x="{left + j * cw + cw / 2 - 1}" y="{top + i * ch + 27}" class="cellsm" '
                f'text-anchor="middle">n={_e(_fmt(n))}</text></g>'
            )
    p.append("</svg>")
    return "".join(p)
