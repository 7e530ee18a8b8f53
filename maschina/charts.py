"""Bar charts as inline SVG, rendered on the server: the admin's dashboards need no JavaScript and no
CDN. Each bar carries its label and value as data attributes (and a <title> tooltip), so what a
chart shows can be read back by a browser test."""

import math

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH, HEIGHT = 720, 220
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 64, 44, 12
BAR = "#417690"  # the admin's own blue


def _figure(value: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if value >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + unit
    return str(value)


def bar_chart(name: str, points: list[tuple[str, int]], *, title: str, tick=str) -> SafeString:
    """Vertical bars, one per (label, value), in the order given; `name` identifies the chart and
    `tick` shortens a label for the axis (the data attributes keep it whole)."""
    if not points:
        return format_html('<p class="chart-empty" data-chart="{}">{}: nothing yet.</p>', name, title)
    top = max(value for _, value in points) or 1
    plot_w, plot_h = WIDTH - MARGIN_LEFT - 8, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    step = plot_w / len(points)
    bar_w = max(min(step * 0.8, 60), 1)
    widest = max(len(tick(label)) for label, _ in points) * 6 + 8  # pixels of the longest axis label
    every = math.ceil(widest / step)  # label every bar whose label fits beside the last one shown
    bars = []
    for i, (label, value) in enumerate(points):
        h = plot_h * value / top
        x, y = MARGIN_LEFT + i * step + (step - bar_w) / 2, MARGIN_TOP + plot_h - h
        shown = tick(label) if i % every == 0 else ""
        bars.append(
            (
                label,
                value,
                f"{x:.1f}",
                f"{y:.1f}",
                f"{bar_w:.1f}",
                f"{h:.1f}",
                f"{label}: {value:,}",
                f"{x + bar_w / 2:.1f}",
                HEIGHT - MARGIN_BOTTOM + 16,
                shown,
            )
        )
    body = format_html_join(
        "",
        '<g class="bar" data-label="{}" data-value="{}"><rect x="{}" y="{}" width="{}" height="{}" fill="'
        + BAR
        + '"><title>{}</title></rect><text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text></g>',
        bars,
    )
    axis_y = MARGIN_TOP + plot_h
    return format_html(
        '<figure class="chart"><figcaption>{}</figcaption>'
        '<svg xmlns="http://www.w3.org/2000/svg" data-chart="{}" role="img" aria-label="{}" '
        'viewBox="0 0 {} {}" width="{}" height="{}" font-family="sans-serif">'
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999"/>'
        '<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>'
        '<text x="{}" y="{}" font-size="10" text-anchor="end">0</text>{}</svg></figure>',
        title, name, title, WIDTH, HEIGHT, WIDTH, HEIGHT,
        MARGIN_LEFT, axis_y, WIDTH - 8, axis_y,
        MARGIN_LEFT - 6, MARGIN_TOP + 10, _figure(top),
        MARGIN_LEFT - 6, axis_y, body,
    )  # fmt: skip
