"""What the room sees to follow along: QR codes and short links read off the projector. No Streamlit, no torch.

A short link is the Lecture page's ``?demo=3`` (``balance.lecture.steps.short_link``): short enough to type, and the
page forwards it to Explore with the demo's full settings. The QR code (``segno``, pure Python, no network) encodes
the same link in full, with the address the students reach the app at: ``BALANCE_PUBLIC_URL`` where the lecturer
set one (a server behind a proxy, or a class on a network), else the address this browser shows.
"""

from __future__ import annotations

import io
import os
from urllib.parse import urlsplit

import segno

PUBLIC_URL = "BALANCE_PUBLIC_URL"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def origin(page_url: str | None) -> str:
    """'http://host:8501' (with a path prefix the app is served under, if any): from ``BALANCE_PUBLIC_URL`` or else
    from ``page_url`` (the browser's address of some page of the app, e.g. ``st.context.url``); '' when neither."""
    public = os.environ.get(PUBLIC_URL, "").strip()
    if public:
        return public.rstrip("/")
    if not page_url:
        return ""
    parts = urlsplit(page_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    prefix = parts.path.rsplit("/", 1)[0]  # /base/lecture -> /base
    return f"{parts.scheme}://{parts.netloc}{prefix}"


def absolute(origin_url: str, relative: str) -> str:
    """``relative`` ('lecture?demo=3') under ``origin_url``; ``relative`` itself when the origin is unknown."""
    return f"{origin_url}/{relative}" if origin_url else relative


def shown(url: str) -> str:
    """A link as a projector shows it: no scheme ('192.168.1.5:8501/lecture?demo=3')."""
    return url.split("://", 1)[-1]


def this_machine_only(url: str) -> bool:
    """Whether ``url`` is a loopback address, which no student's device can open."""
    host = urlsplit(url).hostname or ""
    return host in LOOPBACK or host.startswith("127.")


def qr_svg(url: str, scale: int = 4) -> str:
    """``url`` as a QR code, an inline <svg> element (black on white, a 2-module quiet zone), ``scale`` px a module.
    Medium error correction: it still scans off a dim projector."""
    return segno.make(url, error="m").svg_inline(scale=scale, border=2, dark="#000", light="#fff")


def qr_png(url: str, scale: int = 6) -> bytes:
    """``qr_svg`` as PNG bytes (``scale`` px a module)."""
    out = io.BytesIO()
    segno.make(url, error="m").save(out, kind="png", scale=scale, border=2, dark="#000", light="#fff")
    return out.getvalue()
