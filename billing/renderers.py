import csv
import io

from rest_framework.renderers import BaseRenderer

from .history import FIGURES


class UsageHistoryCsvRenderer(BaseRenderer):
    """GET /usage/history with `Accept: text/csv`: its rows, a header line first."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        group = data["group_by"]
        writer.writerow([group, *FIGURES])
        for row in data["results"]:
            writer.writerow(["" if row[group] is None else row[group], *(row[name] for name in FIGURES)])
        return out.getvalue().encode(self.charset)
