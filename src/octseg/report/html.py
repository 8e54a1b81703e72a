"""Building blocks of octseg's self-contained HTML pages: escaping, inline images, the page frame.

Every page is one file that works offline from disk: images are ``data:`` URIs, scripts and styles
are inline, and nothing is fetched from a network (no CDN, no server). Every text that comes from
a file name or a file's content passes through :func:`esc` (or, inside a script, :func:`js_json`).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

#: Marks a page as octseg's, so ``octseg report`` may replace it without ``--overwrite``.
GENERATOR = "octseg report"


def esc(text) -> str:
    """HTML-escape any text (quotes included) for element content and attribute values."""
    return html.escape(str(text), quote=True)


def js_json(obj) -> str:
    """JSON for an inline ``<script>``: ``<``, ``>`` and ``&`` as \\u escapes, so no name can close
    the script element or open a comment."""
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def jpeg_uri(image_u8: np.ndarray, quality: int = 85) -> str:
    """A gray uint8 image as a JPEG ``data:`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_u8)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_uri(array: np.ndarray, compress_level: int = 6) -> str:
    """A uint8 gray (H, W) or RGB (H, W, 3) array as a PNG ``data:`` URI (masks keep their exact values)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=compress_level)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_file_uri(path: Path) -> str:
    """An existing PNG file as a ``data:`` URI (bytes as they are)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def u16_b64(array: np.ndarray) -> str:
    """A uint16 array as base64 of its little-endian bytes (read in the page with a Uint16Array)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<u2").tobytes()).decode("ascii")


def table(header: Sequence, rows: Iterable[Sequence], cls: str = "") -> str:
    """A plain HTML table; cells are escaped unless they are already-built HTML wrapped in :class:`Raw`."""
    def cell(v, tag):
        return f"<{tag}>{v.html if isinstance(v, Raw) else esc(v)}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(v, "td") for v in r) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Raw:
    """HTML that :func:`table` puts in a cell as it is (built from escaped parts by the caller)."""

    def __init__(self, html_text: str):
        self.html = html_text


BASE_CSS = """
:root { color-scheme: dark; }
body { font: 14px/1.45 system-ui, sans-serif; background: #16181c; color: #e6e6e6; margin: 0 auto;
       padding: 12px 24px 48px; max-width: 1500px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
a { color: #56b4e9; }
table { border-collapse: collapse; margin: 6px 0 14px; }
th, td { border-bottom: 1px solid #333; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { color: #aaa; font-weight: 600; }
.note { color: #f0e442; } .muted { color: #999; } .low { color: #e69f00; font-weight: 600; }
pre { background: #0e0f12; padding: 10px; overflow: auto; border: 1px solid #333; }
img.figure { max-width: 100%; background: #fff; }
"""


def page(title: str, body: str, css: str = "", script: str = "", subtitle: str = "") -> str:
    """One complete HTML document (escaped title; ``body``/``css``/``script`` are already safe)."""
    from octseg import __version__

    sub = f'<p class="muted">{subtitle}</p>' if subtitle else ""
    js = f"<script>\n{script}\n</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{GENERATOR} {esc(__version__)}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{BASE_CSS}{css}</style></head>\n<body>"
            f"<h1>{esc(title)}</h1>{sub}\n{body}\n{js}\n</body></html>\n")


def fmt_num(x: Optional[float], digits: int = 4) -> str:
    if x is None:
        return ""
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.0f}"
