"""HTML to PDF with WeasyPrint, imported only when a PDF is asked for; nothing but our own stylesheets is fetched.

WeasyPrint (https://doc.courtbouillon.org/weasyprint/) lays out the same HTML the pages serve, with the print
stylesheet (its default media type is `print`). It needs Pango through its system libraries; where they are missing
the import fails with OSError, answered as PdfUnavailable (501) naming the Debian packages its docs list for
installing from wheels on Debian ≥ 11: `libpango-1.0-0 libpangoft2-1.0-0` (docs/first_steps.rst, "Debian ≥ 11"),
plus a font (`fonts-dejavu-core`, its "Missing Fonts" troubleshooting).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.errors import PdfUnavailable

DEBIAN_PACKAGES = "libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b fonts-dejavu-core"
BASE_URL = "https://gpuplan.invalid/"  # the pages' relative links resolve under it; it is never fetched


def _weasyprint() -> Any:
    """The weasyprint module, or PdfUnavailable saying what to install."""
    try:
        import weasyprint
    except ImportError:
        raise PdfUnavailable(
            "PDF export needs WeasyPrint on the server: pip install weasyprint (gpuplan's dependencies list it)"
        ) from None
    except OSError as exc:  # cffi could not dlopen Pango, HarfBuzz or fontconfig
        raise PdfUnavailable(
            f"PDF export needs WeasyPrint's system libraries on the server ({exc}): on Debian or Ubuntu, "
            f"apt-get install {DEBIAN_PACKAGES}"
        ) from None
    return weasyprint


def _fetcher(weasyprint: Any, static_dir: Path) -> Any:
    """A URL fetcher that serves files of `static_dir` for `/static/...` and refuses every other URL (no network,
    no file:// reads: the HTML carries user text, and WeasyPrint's docs warn against untrusted fetches)."""
    base = weasyprint.urls.URLFetcher

    class StaticOnly(base):  # type: ignore[misc, valid-type]
        def fetch(self, url: str, headers: Any = None) -> Any:
            prefix = BASE_URL + "static/"
            name = url.split("?", 1)[0].removeprefix(prefix) if url.startswith(prefix) else ""
            path = (static_dir / name).resolve()
            if not name or static_dir.resolve() not in path.parents or not path.is_file():
                raise ValueError(f"not fetched: {url[:200]}")
            kind = "text/css" if path.suffix == ".css" else "application/octet-stream"
            return weasyprint.urls.URLFetcherResponse(url, path.read_bytes(), {"Content-Type": kind})

    return StaticOnly()


def html_to_pdf(html: str, static_dir: Path, extra_css: str = "") -> bytes:
    """The page's HTML (print media) as PDF bytes; `extra_css` is laid over the page's own stylesheet."""
    weasyprint = _weasyprint()
    document = weasyprint.HTML(string=html, base_url=BASE_URL, url_fetcher=_fetcher(weasyprint, static_dir))
    stylesheets = [weasyprint.CSS(string=extra_css)] if extra_css else None
    pdf: bytes = document.write_pdf(stylesheets=stylesheets)
    return pdf
