"""A self-contained HTML gallery of generated captions next to their references, for eyeballing a model.

Images are embedded as small base64 JPEG thumbnails, so the single file still works when it is copied, mailed
or opened on a phone. All text is HTML-escaped (captions come from a model and datasets), and a strict
Content-Security-Policy forbids scripts and remote loads as a second line of defence.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from captioner.encoders.images import load_image
from captioner.errors import ImageError

logger = logging.getLogger(__name__)

THUMBNAIL_PX = 224  # longer side; ~10 KB per image as JPEG, so a 24-image page stays well under 1 MB
GALLERY_FILE = "gallery.html"


@dataclass(frozen=True)
class GalleryItem:
    """One card: an image, the generated caption, its references and optional per-image scores."""

    image_path: Path
    generated: str
    references: list[str]
    extra: dict[str, float] | None = None


def write_gallery(items: Sequence[GalleryItem], out_dir: Path, title: str = "Captions") -> Path:
    """Write out_dir/gallery.html with one card per item, in the given order, and return its path.

    An image that cannot be read gets a placeholder instead of failing the page.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cards = "\n".join(_card(item) for item in items)
    page = _PAGE.format(title=html.escape(title), count=len(items), cards=cards)
    path = out_dir / GALLERY_FILE
    path.write_text(page, encoding="utf-8")
    return path


def thumbnail_data_uri(path: Path, size: int = THUMBNAIL_PX) -> str | None:
    """A JPEG thumbnail (longer side <= size px) as a data: URI, or None if the image cannot be read."""
    try:
        # draft_size lets libjpeg decode a 500x375 Flickr photo at reduced scale: faster, same thumbnail.
        image = load_image(path, draft_size=size)
    except ImageError as exc:
        logger.warning("gallery: no thumbnail for %s: %s", path, exc)
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _card(item: GalleryItem) -> str:
    esc = html.escape
    uri = thumbnail_data_uri(Path(item.image_path))
    if uri is None:
        picture = '<div class="missing">image unavailable</div>'
    else:
        picture = f'<img src="{uri}" alt="{esc(item.generated)}" loading="lazy">'
    scores = " · ".join(f"{esc(name)} {value:.3f}" for name, value in (item.extra or {}).items())
    references = "".join(f"<li>{esc(text)}</li>" for text in item.references)
    return (
        '<figure class="card">'
        f"{picture}<figcaption>"
        f'<p class="name">{esc(Path(item.image_path).name)}</p>'
        f'<p class="generated">{esc(item.generated) or "<em>(empty caption)</em>"}</p>'
        + (f'<p class="scores">{scores}</p>' if scores else "")
        + f'<ol class="refs">{references}</ol>'
        "</figcaption></figure>"
    )


# Doubled braces are literal CSS braces for str.format.
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; padding: 1rem; background: #f6f6f6; color: #222; }}
h1 {{ font-size: 1.3rem; margin: 0 0 1rem; }}
.grid {{ display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); }}
.card {{ margin: 0; background: #fff; border-radius: 8px; overflow: hidden; box-shadow: 0 1px 3px #0002; }}
.card img, .missing {{ display: block; width: 100%; aspect-ratio: 4 / 3; object-fit: contain; background: #ddd; }}
.missing {{ display: flex; align-items: center; justify-content: center; color: #666; }}
figcaption {{ padding: 0.6rem 0.8rem; }}
.name {{ margin: 0; font-size: 0.75rem; color: #777; word-break: break-all; }}
.generated {{ margin: 0.3rem 0; font-weight: 600; }}
.scores {{ margin: 0.3rem 0; font-size: 0.8rem; color: #0a5; font-variant-numeric: tabular-nums; }}
.refs {{ margin: 0.3rem 0 0; padding-left: 1.2rem; font-size: 0.85rem; color: #444; }}
</style>
</head>
<body>
<h1>{title} <small>({count} images)</small></h1>
<main class="grid">
{cards}
</main>
</body>
</html>
"""
