"""Building HTML (and SVG) from Python values, escaped unless marked as markup."""

from __future__ import annotations

import html
from typing import Any


class Markup(str):
    """Text that is already HTML; everything else is escaped when it goes into a tag."""


def esc(value: Any) -> Markup:
    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


def tag(name: str, *children: Any, **attrs: Any) -> Markup:
    """<name attrs>children</name>; `class_` -> class, `data_x` -> data-x; None/False dropped."""
    parts = [name]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        parts.append(attr if value is True else f'{attr}="{html.escape(str(value), quote=True)}"')
    return Markup(f"<{' '.join(parts)}>" + "".join(esc(c) for c in children) + f"</{name}>")
