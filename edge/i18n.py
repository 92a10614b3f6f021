"""What a technician reads, in the technician's language (gettext catalogues managed with Babel).

Everything shown to a person (CLI output, fault and reason texts, hints) goes through :func:`_`; log lines,
fault names and JSON keys never do (a backend and a support engineer read those in English). The language
comes from ``--lang``, else ``LC_ALL`` / ``LC_MESSAGES`` / ``LANG``, else English; a language without a
catalogue falls back to English. Catalogues live in ``edge/locale/<lang>/LC_MESSAGES/cabinet_edge.po``.

Screen widths are counted in terminal cells (:func:`display_width`): a CJK character takes two, a Thai
combining mark none, so a Chinese or Thai screen fits 80 columns too.
"""

from __future__ import annotations

import functools
import gettext
import os
import re
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


_ALIASES = {"zh": "zh_CN", "zh_Hans": "zh_CN", "pt": "pt_BR", "zh-CN": "zh_CN", "pt-BR": "pt_BR"}


def use(lang: str | None = None) -> str:
    """Switch every later :func:`_` to ``lang`` (or the environment's language); returns the language used:
    "en" when there is no catalogue for it (``es_MX`` uses ``es``; ``zh`` and ``pt`` mean zh_CN and pt_BR)."""
    global _translations, _language
    wanted = lang or language_from_env()
    wanted = _ALIASES.get(wanted, wanted)
    _translations = gettext.translation(DOMAIN, LOCALE_DIR, languages=[wanted], fallback=True)
    _language = wanted if isinstance(_translations, gettext.GNUTranslations) else "en"
    return _language


def current() -> str:
    return _language


def _(message: str) -> str:
    return _translations.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _translations.ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Marks ``message`` for extraction without translating it (translated where it is shown)."""
    return message


_NESTED = ("detail", "reason", "text")  # placeholders that hold another core text (any characters)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_VALUE = "(?:(?!; ).)+?"  # a value never spans the "; " that joins two texts


@functools.lru_cache(maxsize=1)
def _templates() -> list[tuple[re.Pattern[str], str]]:
    """(regex, msgid) of every core and config text, the most literal text first (``tripped: {fault}:
    {detail} (+{more} more)`` before ``tripped: {fault}: {detail}``)."""
    from edge.i18n_texts import CONFIG_TEXTS, CORE_TEXTS

    out = []
    for msgid in sorted(CORE_TEXTS + CONFIG_TEXTS, key=lambda m: -len(_PLACEHOLDER.sub("", m))):
        parts = _PLACEHOLDER.split(msgid)  # literal, name, literal, name, ...
        pattern = "".join(
            re.escape(p) if i % 2 == 0 else f"(?P<{p}>{'.+?' if p in _NESTED else _VALUE})" for i, p in enumerate(parts)
        )
        out.append((re.compile(f"^{pattern}$", re.DOTALL), msgid))
    return out


def _one(text: str, strict: bool) -> str | None:
    """``text`` as one template's translation; strict: None unless the nested texts translate too."""
    for pattern, msgid in _templates():
        m = pattern.match(text)
        if m is None:
            continue
        values: dict[str, str] = {}
        for key, value in m.groupdict().items():
            inner = _joined(value, strict) if key in _NESTED else value
            if inner is None:
                break
            values[key] = inner
        else:
            return _(msgid).format(**values)
    return None


def _joined(text: str, strict: bool) -> str | None:
    """Texts joined by ``"; "`` (``connector 1: ...; connector 2: ...``), each the shortest run of parts a
    template translates whole (``power module 3 not answering; its share removed`` is one text)."""
    parts, out, i = text.split("; "), [], 0
    while i < len(parts):
        for j in range(i + 1, len(parts) + 1):
            done = _one("; ".join(parts[i:j]), True)
            if done is not None:
                out.append(done)
                i = j
                break
        else:
            if strict:
                return None
            out.append(_one(parts[i], False) or parts[i])  # translate around what no template knows
            i += 1
    return "; ".join(out)


def core_text(text: str) -> str:
    """A reason, fault detail or hint of the safety core, or a config problem (English), in the current
    language: matched against the templates of edge/i18n_texts.py and rendered with the same values; texts
    joined by ``"; "`` are translated one by one; what no template matches stays as it is."""
    if _language == "en" or not text:
        return text
    return _joined(text, True) or _joined(text, False) or text


def rule_label(rule: str) -> str:
    """The name of a limit rule (``"grid"``) as a technician reads it, in the current language."""
    from edge.i18n_texts import RULE_LABELS

    return _(RULE_LABELS[rule]) if rule in RULE_LABELS else rule


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
