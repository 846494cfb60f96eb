"""The Markdown tables `bench.scale` prints: one row per result, the columns named."""

from __future__ import annotations

from typing import Any


def markdown_table(columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    """`columns` are (key in a row, heading) pairs; a missing or None value is left blank."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join(" --- " for _ in columns) + "|"
    body = [
        "| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k, _ in columns) + " |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])
