"""Tables (CSV, Markdown, LaTeX booktabs) and the jinja2 HTML report."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2
import pandas as pd

from maxact.io import atomic_save, atomic_write_text
from maxact.provenance import environment, timestamp


def write_table(df: pd.DataFrame, out_dir: Path, stem: str, caption: str, float_fmt: str = "{:.4g}",
                note: str | None = None) -> dict:
    """One table in three formats; returns their paths and an HTML rendering for the report. ``note`` (e.g. why
    the table is empty) goes under the caption in the Markdown and the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / f"{stem}.csv"
    atomic_save(csv, lambda tmp: df.to_csv(tmp, index=False))
    fmt = df.copy()
    for c in fmt.columns:
        if pd.api.types.is_float_dtype(fmt[c]):
            fmt[c] = fmt[c].map(lambda v: "" if pd.isna(v) else float_fmt.format(v))
    fmt = fmt.fillna("").astype(str)
    md = out_dir / f"{stem}.md"
    atomic_write_text(md, f"**{caption}**\n\n" + (f"{note}\n\n" if note else "") + _markdown(fmt) + "\n")
    tex = out_dir / f"{stem}.tex"
    body = fmt.to_latex(index=False, escape=True, caption=caption, label=f"tab:{stem}", column_format="l" * len(fmt.columns))
    atomic_write_text(tex, "% requires \\usepackage{booktabs}\n" + body)
    html = fmt.to_html(index=False, classes="table", border=0, escape=True) if len(fmt) else ""
    return {"csv": str(csv), "md": str(md), "tex": str(tex), "html": html, "caption": caption, "stem": stem, "note": note}


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def render_report(template_path, out_path, context: dict) -> None:
    out_path = Path(out_path)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(template_path).parent)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    tpl = env.get_template(Path(template_path).name)
    ctx = {"generated": timestamp(), "environment": environment(), **context}
    ctx["rel"] = lambda p: os.path.relpath(p, out_path.parent)
    atomic_write_text(out_path, tpl.render(**ctx))
