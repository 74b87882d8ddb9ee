"""Markdown the Dagster UI renders in asset metadata: inline plots."""

import base64


def png_md(title: str, data: bytes) -> str:
    """A titled PNG embedded as a data URI (the UI shows it inline)."""
    return f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(data).decode()})"
