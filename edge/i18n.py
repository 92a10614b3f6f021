"""What a technician reads, in the technician's language (gettext catalogues managed with Babel).

Everything shown to a person (CLI output, fault and reason texts, hints) goes through :func:`_`; log lines,
fault names and JSON keys never do (a backend and a support engineer read those in English). The language
comes from ``--lang``, else ``LC_ALL`` / ``LC_MESSAGES`` / ``LANG``, else English; a language without a
catalogue falls back to English. Catalogues live in ``edge/locale/<lang>/LC_MESSAGES/cabinet_edge.po``.

Screen widths are counted in terminal cells (:func:`display_width`): a CJK character takes two, a Thai
combining mark none, so a Chinese or Thai screen fits 80 columns too.
"""

from __future__ import annotations

import gettext
import os
from collections.abc import Mapping
from pathlib import Path

from wcwidth import wcswidth, wcwidth

DOMAIN = "cabinet_edge"
LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("en", "zh_CN", "es", "pt_BR", "th")

_translations: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def language_from_env(env: Mapping[str, str] | None = None) -> str:
    """The language a technician's environment asks for (``LC_ALL``, ``LC_MESSAGES``, ``LANG``), or "en"."""
    source: Mapping[str, str] = os.environ if env is None else env
    for key in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = source.get(key, "")
        if value and value not in ("C", "POSIX"):
            return value.split(".")[0].split("@")[0]
    return "en"


def use(lang: str | None = None) -> str:
    """Switch every later :func:`_` to ``lang`` (or the environment's language); returns the language used."""
    global _translations, _language
    wanted = lang or language_from_env()
    _translations = gettext.translation(DOMAIN, LOCALE_DIR, languages=[wanted], fallback=True)
    _language = wanted if isinstance(_translations, gettext.GNUTranslations) else "en"
    return _language


def current() -> str:
    return _language


def _(message: str) -> str:
    return _translations.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _translations.ngettext(singular, plural, n)


def display_width(text: str) -> int:
    """Terminal cells ``text`` takes (CJK 2, combining marks 0); control characters count 1."""
    width = wcswidth(text)
    if width >= 0:
        return width
    return sum(max(wcwidth(ch), 1) for ch in text)


def clip(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``width`` terminal cells, ending with ``ellipsis`` when cut."""
    if display_width(text) <= width:
        return text
    room = width - display_width(ellipsis)
    out, used = [], 0
    for ch in text:
        w = max(wcwidth(ch), 0)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + ellipsis
