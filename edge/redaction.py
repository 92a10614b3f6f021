"""Which config keys are secret, and how their values are hidden: the one place that decides.

A key is secret when its name says so (:func:`is_secret_key`): it contains one of :data:`SECRET_WORDS`
or is ``key`` / ends in ``_key`` (key material, e.g. ``private_key``), unless it names a file
(``_file``, ``_path``, ``_dir``): ``telemetry.mqtt.tls.key_file`` is a path, printed; the key it points
at is never read. Everything under a secret key is secret (a table, an array, a number).

Used by ``edge config check`` (the effective config), the config error messages (no value of a secret
key), ``edge diag`` (parsed config and raw text) and the daemon's diag answer. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any, NamedTuple

SECRET_WORDS = ("password", "passwd", "secret", "token", "passphrase", "psk", "private", "credential")
PATH_SUFFIXES = ("_file", "_path", "_dir")
REDACTED = "<redacted>"


def is_secret_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    if k.endswith(PATH_SUFFIXES):
        return False
    return any(w in k for w in SECRET_WORDS) or k in ("key", "apikey") or k.endswith("_key")


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with the value of every secret-named key replaced (``None`` stays ``None``)."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(str(k)) and v is not None else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def secret_values(obj: Any, under_secret: bool = False) -> Iterator[str]:
    """Every string or number found under a secret key of parsed config ``obj``, as text."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from secret_values(v, under_secret or is_secret_key(str(k)))
    elif isinstance(obj, list):
        for v in obj:
            yield from secret_values(v, under_secret)
    elif under_secret and isinstance(obj, (str, int, float)) and not isinstance(obj, bool):
        yield str(obj)


def redact_toml_text(text: str) -> str:
    """``text`` of a config file with the value of every secret key replaced by ``"<redacted>"``.

    Works on text that is not valid TOML (the case it exists for: a config that does not load is
    still bundled, comments and line numbers kept): a tolerant tokenizer knows TOML's strings (all four
    kinds, multi-line and unterminated ones), quoted, escaped and dotted keys, table headers, inline
    tables and arrays over several lines; a line under a table named after a secret is hidden whole.
    When the text does parse, the result is checked against the parsed secrets; if one of them still
    shows, the parsed config, redacted, is returned instead of the text. Errs towards hiding.
    """
    out = _TextRedactor(text).run()
    out = out if out.endswith("\n") else out + "\n"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return out
    if any(value in out for value in secret_values(data) if value):
        return (
            "# the config text could not be redacted reliably; its parsed content, redacted:\n"
            + json.dumps(redact(data), indent=2, default=str)
            + "\n"
        )
    return out


class _Tok(NamedTuple):
    kind: str  # nl, comment, str, bare, punct, other
    text: str
    start: int
    end: int


_TOKEN = re.compile(
    r"""
    (?P<nl>\r?\n)
    |(?P<ws>[ \t]+)
    |(?P<comment>\#[^\r\n]*)
    |(?P<str>\"\"\"(?:\\[\s\S]|[^\\])*?\"{3,5}|\"\"\"[\s\S]*
        |'''[\s\S]*?'{3,5}|'''[\s\S]*
        |"(?:\\.|[^"\\\r\n])*"?|'[^'\r\n]*'?)
    |(?P<bare>[A-Za-z0-9_\-+:]+)
    |(?P<punct>[=.,\[\]{}])
    |(?P<other>.)
    """,
    re.VERBOSE,
)


def _tokens(text: str) -> list[_Tok]:
    out = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "other"
        if kind != "ws":
            out.append(_Tok(kind, m.group(), m.start(), m.end()))
    return out


def _key_name(tok: _Tok) -> str:
    """The key a bare or quoted key token names (escapes decoded: ``"pass\\u0077ord"`` is password)."""
    if tok.kind != "str":
        return tok.text
    try:
        return str(tomllib.loads(f"k = {tok.text}")["k"])
    except tomllib.TOMLDecodeError:
        return tok.text.strip("\"'")


class _TextRedactor:
    """Walks the tokens statement by statement, recording the spans of secret values."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.spans: list[tuple[int, int]] = []

    def run(self) -> str:
        secret_table = False
        while self.i < len(self.toks):
            tok = self.toks[self.i]
            if tok.kind in ("nl", "comment"):
                self.i += 1
            elif self._header_here():
                secret_table = any(is_secret_key(k) for k in self._header())
            else:
                self._line(secret_table)
        out, pos = [], 0
        for start, end in sorted(self.spans):
            if start >= pos:
                out += [self.text[pos:start], f'"{REDACTED}"']
                pos = end
        return "".join(out) + self.text[pos:]

    # -- helpers over the token list ----------------------------------------------------------------
    def _tok(self, k: int = 0) -> _Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def _is(self, text: str, k: int = 0) -> bool:
        tok = self._tok(k)
        return tok is not None and tok.kind == "punct" and tok.text == text

    def _key_path_len(self, k: int = 0) -> int:
        """Tokens of a (dotted) key starting ``k`` tokens ahead; 0 when there is none."""
        n = 0
        while True:
            tok = self._tok(k + n)
            if tok is None or tok.kind not in ("bare", "str"):
                return 0 if n == 0 else n - 1
            n += 1
            if not self._is(".", k + n):
                return n
            n += 1

    def _keyval_here(self, k: int = 0) -> bool:
        n = self._key_path_len(k)
        return n > 0 and self._is("=", k + n)

    def _header_here(self, k: int = 0) -> bool:
        """A ``[table]`` or ``[[array]]`` header starts ``k`` tokens ahead, at the start of its line."""
        tok = self._tok(k)
        if tok is None or not self._is("[", k) or not _line_start(self.text, tok.start):
            return False
        j = k + (2 if self._is("[", k + 1) else 1)
        n = self._key_path_len(j)
        return n > 0 and self._is("]", j + n)

    def _header(self) -> list[str]:
        self.i += 2 if self._is("[", 1) else 1
        keys = self._key_path()
        while self._is("]"):
            self.i += 1
        return keys

    def _key_path(self) -> list[str]:
        n = self._key_path_len()
        keys = [_key_name(t) for t in self.toks[self.i : self.i + n] if t.kind != "punct"]
        self.i += n
        return keys

    # -- statements and values ----------------------------------------------------------------------
    def _line(self, secret_table: bool) -> None:
        """One line of statements; what is not a key/value passes, or is hidden in a secret table."""
        while (tok := self._tok()) is not None and tok.kind != "nl":
            if self._keyval_here():
                self._keyval(secret_table, top=True)
            elif secret_table:
                self._hide_rest_of_line(tok.start)
            else:
                self.i += 1

    def _hide_rest_of_line(self, start: int) -> None:
        end = start
        while (tok := self._tok()) is not None and tok.kind != "nl":
            end = tok.end
            self.i += 1
        self.spans.append((start, end))

    def _keyval(self, secret: bool, top: bool) -> None:
        secret = any(is_secret_key(k) for k in self._key_path()) or secret
        self.i += 1  # "="
        if secret and (tok := self._tok()) is not None and tok.kind == "nl":
            self.i += 1  # broken: the value on the next line; still the secret's
        first = self._tok()
        if first is None or first.kind == "nl":
            return
        self._value(secret)
        if not secret:
            return
        end = self.toks[self.i - 1].end
        while top and (tok := self._tok()) is not None and tok.kind != "nl":
            end = tok.end  # whatever follows on the value's last line: a broken value, a comment
            self.i += 1
        self.spans.append((first.start, end))

    def _value(self, secret: bool) -> None:
        if self._is("{"):
            self._inline_table(secret)
        elif self._is("["):
            self._array(secret)
        elif (tok := self._tok()) is not None and tok.kind != "nl":
            self.i += 1

    def _inline_table(self, secret: bool) -> None:
        self.i += 1
        while (tok := self._tok()) is not None and not self._is("}"):
            if tok.kind == "nl" and self._header_here(1):
                return  # unterminated: the next table starts
            if self._keyval_here():
                self._keyval(secret, top=False)
            else:
                self.i += 1
        self.i += 1 if self._is("}") else 0

    def _array(self, secret: bool) -> None:
        self.i += 1
        while (tok := self._tok()) is not None and not self._is("]"):
            if tok.kind == "nl" and (self._header_here(1) or self._keyval_here(1)):
                return  # unterminated: the next statement starts
            if tok.kind in ("nl", "comment") or self._is(","):
                self.i += 1
            else:
                start = self.i
                self._value(secret)
                self.i += 1 if self.i == start else 0
        self.i += 1 if self._is("]") else 0


def _line_start(text: str, pos: int) -> bool:
    """Only blanks between the previous newline and ``pos``."""
    line_begin = text.rfind("\n", 0, pos) + 1
    return text[line_begin:pos].strip() == ""
