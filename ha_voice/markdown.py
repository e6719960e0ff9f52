"""Markdown for the generated docs pages (configuration.md, commands.md)."""

from __future__ import annotations

__all__ = ["table"]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A GitHub-flavoured table, one line a row; `|` inside a cell is escaped."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]
