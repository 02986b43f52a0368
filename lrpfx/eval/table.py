"""Aligned plain-text tables: how the reports of this package print."""
from __future__ import annotations

from typing import List, Tuple


def text_table(rows: List[Tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
