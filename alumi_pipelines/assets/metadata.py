"""Markdown the Dagster UI renders in asset metadata: tables, class histograms, inline plots."""

import base64
from typing import Any


def png_md(title: str, data: bytes) -> str:
    """A titled PNG embedded as a data URI (the UI shows it inline)."""
    return f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(data).decode()})"


def histogram_md(counts: dict[str, int]) -> str:
    """A markdown table with a bar per class."""
    if not counts:
        return "_no boxes_"
    top = max(counts.values()) or 1
    lines = ["| class | boxes | |", "| --- | ---: | --- |"]
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {name} | {n} | {'█' * max(1, round(20 * n / top))} |")
    return "\n".join(lines)


def counts_md(title: str, counts: dict[str, int], unit: str = "corrections") -> str:
    """A two-column table of counts by key, sorted by key."""
    if not counts:
        return f"_no {title}_"
    return f"| {title} | {unit} |\n| --- | ---: |\n" + "\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items()))


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats with 4 decimals, None as a dash."""

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:.4f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
