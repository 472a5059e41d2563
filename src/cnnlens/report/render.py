"""Render the page dict to one self-contained HTML string with Jinja2 (autoescape on, strict undefined).

The page's CSS and JS are inlined from ``static/``; a Content-Security-Policy allows only ``data:`` images
and the page's own script (by its SHA-256), so the page makes no network request and an injected
``<script>`` could not run even if escaping ever failed.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The report's Jinja2 environment: package templates, autoescape always on, undefined is an error.

    ``autoescape=True`` rather than ``select_autoescape``: the templates end in ``.html.j2``, which
    extension-based selection would not escape.
    """
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cnnlens.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def static_text(name: str) -> str:
    """The text of ``static/<name>`` shipped with the package."""
    return resources.files("cnnlens.report").joinpath("static", name).read_text(encoding="utf-8")


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def render_page(page: dict[str, Any]) -> str:
    """The HTML of a report page.

    ``page`` holds ``title``, ``meta`` (label/value pairs), ``classes``, ``methods`` (``{"id", "label"}``),
    ``sections`` (dicts with ``id``, ``title``, ``text`` and the section's own keys; a ``text`` item is a
    sentence, or ``{"text", "cls"}`` for a sentence about one class that the class chooser filters), ``files`` and
    ``client`` (plain data for the page's script, embedded as escaped JSON).
    """
    css, js = static_text("report.css"), static_text("report.js")
    # the inlined files are ours, but a closing tag inside them would end the element early
    if "</style" in css.lower() or "</script" in js.lower() or "<!--" in js:
        raise ValueError("static/report.css or report.js contains a closing tag; it cannot be inlined")
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           f"script-src {_csp_hash(js)}; base-uri 'none'; form-action 'none'")
    template = environment().get_template("report.html.j2")
    return template.render(page=page, css=Markup(css), js=Markup(js), csp=csp)
