"""The report as blocks (headings, paragraphs, lists, tables, figures), rendered to Markdown and
to self-contained HTML (figures embedded), and the formatting of its numbers."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

METRIC_LABELS = {
    "balanced_accuracy": "balanced accuracy",
    "auc_macro": "AUC (macro one-vs-rest)",
    "f1_weighted": "F1 (weighted)",
    "f1_macro": "F1 (macro)",
    "accuracy": "accuracy",
    "c_index": "C-index (Harrell)",
    "c_index_ipcw": "C-index (IPCW)",
    "ibs": "integrated Brier score",
    "td_auc_mean": "time-dependent AUC (mean)",
    "logrank_p": "log-rank p (high vs low risk)",
}


def _fmt(v, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if metric.endswith("_p") or metric == "wilcoxon_p":
        return f"{v:.3g}"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.3f}"


def _signed(v) -> str:
    return "—" if v is None else f"{v:+.3f}"


def _ci(lo, hi) -> str:
    return "—" if lo is None or pd.isna(lo) else f"{lo:.3f}–{hi:.3f}"


def _none(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _inline(s: str) -> str:
    """The Markdown the report uses inside a block (bold, italics, code) as HTML."""
    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"\*(.+?)\*", r"<em>\1</em>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


STYLE = (
    "body{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.45;"
    "color:#222}table.t{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
    "table.t td,table.t th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#555}"
)


class Doc:
    """The report as blocks, rendered to Markdown and to self-contained HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, df: pd.DataFrame):
        self.blocks.append(("table", df))

    def img(self, path: Path, rel: str, caption: str, max_px: int | None = None):
        """A figure; ``max_px``: embedded in the HTML as a JPEG at most this many pixels on
        its longer side (a slide's heatmaps: the PNG stays whole beside the report)."""
        self.blocks.append(("img", path, rel, caption, max_px))

    def markdown(self) -> str:
        return "\n\n".join(_MARKDOWN[b[0]](*b[1:]) for b in self.blocks) + "\n"

    def html(self, title: str) -> str:
        body = "\n".join(_HTML[b[0]](*b[1:]) for b in self.blocks)
        return (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>\n" + body + "\n</body></html>\n"
        )


def _md_table(df: pd.DataFrame) -> str:
    df = df.astype(str)
    rows = [list(df.columns), ["---"] * len(df.columns), *df.to_numpy().tolist()]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)


def _html_img(path: Path, rel: str, caption: str, max_px: int | None = None) -> str:
    mime, raw = ("png", Path(path).read_bytes()) if max_px is None else _jpeg(path, max_px)
    data = base64.b64encode(raw).decode()
    alt = html.escape(Path(rel).stem)
    return (
        f'<figure><img src="data:image/{mime};base64,{data}" alt="{alt}">'
        f"<figcaption>{_inline(caption)}</figcaption></figure>"
    )


def _jpeg(path: Path, max_px: int) -> tuple[str, bytes]:
    """The picture at most ``max_px`` on its longer side, as JPEG bytes (a heatmap overlay is
    about 0.5 MB as PNG, about a tenth of that here)."""
    import io

    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_px, max_px))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return "jpeg", buf.getvalue()


_MARKDOWN = {
    "h": lambda level, text: "#" * level + " " + text,
    "p": lambda text: text,
    "ul": lambda items: "\n".join(f"- {i}" for i in items),
    "table": _md_table,
    "img": lambda path, rel, caption, max_px=None: f"![{Path(rel).stem}]({rel})\n\n*{caption}*",
}
_HTML = {
    "h": lambda level, text: f"<h{level}>{_inline(text)}</h{level}>",
    "p": lambda text: f"<p>{_inline(text)}</p>",
    "ul": lambda items: "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>",
    "table": lambda df: df.to_html(index=False, border=0, classes="t", escape=True),
    "img": _html_img,
}
