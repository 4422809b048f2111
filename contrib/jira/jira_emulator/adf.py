"""Atlassian Document Format (ADF) helpers: plain text out of a document and back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Nodes whose children run together on one line; every other node with content stacks its
# children line by line (doc, lists, list items, quotes, panels, tables).
_INLINE_CONTAINERS = frozenset({"paragraph", "heading", "codeBlock"})


def adf_to_text(doc: Mapping[str, Any] | None) -> str:
    """The text of ``doc``: one line per paragraph (or other block), hard breaks as newlines."""
    if not doc:
        return ""
    return _node_text(doc)


def text_to_adf(text: str) -> dict[str, Any]:
    """A document with one paragraph per line; empty text gives a document without content."""
    lines = text.split("\n") if text else []
    return {"type": "doc", "version": 1, "content": [_paragraph(line) for line in lines]}


def is_document(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("type") == "doc"


def _paragraph(line: str) -> dict[str, Any]:
    content = [{"type": "text", "text": line}] if line else []
    return {"type": "paragraph", "content": content}


def _node_text(node: Mapping[str, Any]) -> str:
    kind = node.get("type")
    attrs = node.get("attrs") or {}
    if kind == "text":
        return str(node.get("text", ""))
    if kind == "hardBreak":
        return "\n"
    if kind in ("mention", "emoji", "status"):
        return str(attrs.get("text", ""))
    if kind in ("inlineCard", "blockCard"):
        return str(attrs.get("url", ""))
    children = [_node_text(child) for child in node.get("content") or [] if isinstance(child, dict)]
    return ("" if kind in _INLINE_CONTAINERS else "\n").join(children)
