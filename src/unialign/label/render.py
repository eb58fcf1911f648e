"""Text of language-model queries as safe HTML: markdown with raw HTML escaped.

markdown-it-py in CommonMark mode with ``html`` off: any ``<tag>`` in a prompt or completion
is shown as text, never interpreted; link targets with ``javascript:``, ``vbscript:``,
``file:`` or ``data:`` schemes are not turned into links (markdown-it's ``validateLink``).
The app's Content-Security-Policy forbids inline scripts as a second line of defence.
"""

from __future__ import annotations

from dataclasses import dataclass

from markdown_it import MarkdownIt
from markupsafe import Markup

from unialign.feedback.types import Text

__all__ = ["Block", "markdown", "text_blocks"]

_MD = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False}).enable("table")


def markdown(text: str) -> Markup:
    """``text`` rendered as markdown, with raw HTML escaped."""
    return Markup(_MD.render(text))


@dataclass(frozen=True)
class Block:
    """One message of a text: its role (``""`` for a plain string) and its HTML."""

    role: str
    html: Markup


def text_blocks(value: Text) -> list[Block]:
    """A prompt or completion as blocks: one for a string, one per message of a conversation."""
    if isinstance(value, str):
        return [Block("", markdown(value))]
    return [Block(str(m.get("role", "")), markdown(str(m.get("content", "")))) for m in value]
