"""The little of the Atlassian Document Format (ADF) the provider needs: plain text in and out.

REST API v3 takes and returns rich text (descriptions, comments) only as ADF documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Nodes whose children run together on one line; other nodes with content stack them line by line.
_INLINE_CONTAINERS = frozenset({"paragraph", "heading", "codeBlock"})


def text_to_adf(text: str) -> dict[str, Any]:
    """A document with one paragraph per line of ``text``."""
    return {"type": "doc", "version": 1, "content": [_paragraph(line) for line in text.split("\n")]}


def adf_to_text(node: Mapping[str, Any] | None) -> str:
    """The text of a document: one line per paragraph (or other block), hard breaks as newlines.

    The inverse of :func:`text_to_adf`, so a note reads back exactly as it was written.
    """
    if not node:
        return ""
    kind = node.get("type")
    if kind == "text":
        return str(node.get("text", ""))
    if kind == "hardBreak":
        return "\n"
    if kind in ("mention", "emoji", "status"):
        return str((node.get("attrs") or {}).get("text", ""))
    children = [
        adf_to_text(child) for child in node.get("content") or [] if isinstance(child, dict)
    ]
    return ("" if kind in _INLINE_CONTAINERS else "\n").join(children)


def _paragraph(line: str) -> dict[str, Any]:
    # ADF forbids empty text nodes: an empty line is a paragraph without content.
    return {"type": "paragraph", "content": [{"type": "text", "text": line}] if line else []}
