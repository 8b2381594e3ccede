"""HTML pieces of the report (inline CSS, escaped tables, base64 images) and time helpers."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from typing import Any, Sequence

# ---- HTML pieces ---------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1180px;padding:0 16px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td{max-width:520px;overflow-wrap:break-word}
table.metrics td{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:10px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;
padding:8px 14px;min-width:110px}.card b{display:block;font-size:22px}.card span{color:#555}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.plots img{max-width:100%;height:auto}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:14px}
figure{margin:0;display:flex;flex-wrap:wrap;align-items:flex-start;gap:6px}
figure img{max-width:calc(50% - 3px);height:auto}
figcaption{font-size:12px;color:#444;flex-basis:100%}pre{background:#f7f7f7;padding:8px;overflow:auto}
code{background:#f3f3f3;padding:0 3px}
"""


def page(title: str, body: Sequence[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>"
            f"<h1>{escape(title)}</h1>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")


def h2(text: str) -> str:
    return f"<h2>{escape(text)}</h2>"


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    head_html = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table{attr}><tr>{head_html}</tr>{body}</table>"


def escape(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def img(png: bytes) -> str:
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def jpeg(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return (f'<img alt="overlay" width="{image.width}" height="{image.height}" '
            f'src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">')


def metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _time(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def duration(record: dict) -> float | None:
    start, end = run_interval(record)
    return None if start is None or end is None else max(end - start, 0.0)


def run_interval(record: dict) -> tuple[float | None, float | None]:
    """(start, end) POSIX seconds of a run. started_at / ended_at are whole seconds; a run id
    made by `new_run_id` holds the start to the millisecond, used when it agrees."""
    import re

    start, end = _time(record.get("started_at")), _time(record.get("ended_at"))
    match = re.match(r"(\d{8}T\d{6}\.\d{3})Z", str(record.get("run_id", "")))
    if match and start is not None:
        precise = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%f").replace(
            tzinfo=dt.timezone.utc).timestamp()
        start = precise if start <= precise < start + 1 else start
    return start, end
