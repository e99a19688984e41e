"""XML response bodies."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement, tostring

__all__ = ["Element", "new", "render", "sub"]

DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


def sub(parent: Element, tag: str, text: str | int | None = None) -> Element:
    """Append a child element, with text when given (booleans as true/false)."""
    child = SubElement(parent, tag)
    if isinstance(text, bool):
        child.text = "true" if text else "false"
    elif text is not None:
        child.text = str(text)
    return child


def render(root: Element) -> bytes:
    return (DECLARATION + tostring(root, encoding="unicode")).encode("utf-8")


def new(tag: str) -> Element:
    return Element(tag)
