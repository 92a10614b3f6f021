"""Issue 17 item 12: no secret from the config is ever printed, logged or bundled.

Secrets are planted in every TOML form (bare, quoted, escaped and dotted keys, inline tables, multi-line
basic and literal strings, a number, an array, a table named after a secret) in configs that are valid,
valid TOML but invalid for the schema, and not TOML at all; every output of `edge config check` (text
and --json), `edge run`'s config error, `edge diag` (the whole tar stream) and the redactors is searched
for every planted value.
"""

from __future__ import annotations

import gzip
import logging
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.config import ConfigError, parse_config
from edge.diag import REDACTED, is_secret_key, redact, redact_toml_text
from tests.conftest import sim_config_text

NUMERIC = 73914286501


def _base(tmp: Path) -> str:
    """The sim config without its [telemetry.mqtt] table (each case brings its own)."""
    return sim_config_text(tmp, "[telemetry.mqtt]\nenabled = false\n").rsplit("[telemetry.mqtt]", 1)[0]


# (form, TOML for the mqtt password, the planted value): each one a valid config on its own
VALID_FORMS = [
    ("bare key", '[telemetry.mqtt]\nenabled = false\npassword = "bare-S3cret-a1"\n', "bare-S3cret-a1"),
    ("quoted key", '[telemetry.mqtt]\nenabled = false\n"password" = "quoted-S3cret-b2"\n', "quoted-S3cret-b2"),
    ("literal key", "[telemetry.mqtt]\nenabled = false\n'password' = 'literal-S3cret-c3'\n", "literal-S3cret-c3"),
    ("escaped key", '[telemetry.mqtt]\nenabled = false\n"pass\\u0077ord" = "escaped-S3cret-d4"\n', "escaped-S3cret-d4"),
    ("dotted key", '[telemetry]\nmqtt.enabled = false\nmqtt . "password" = "dotted-S3cret-e5"\n', "dotted-S3cret-e5"),
    ("inline table", '[telemetry]\nmqtt = { enabled = false, password = "inline-S3cret-f6" }\n', "inline-S3cret-f6"),
    (
        "multi-line basic",
        '[telemetry.mqtt]\nenabled = false\npassword = """\nmlbasic-S3cret-g7\nsecond-line-h8"""\n',
        "mlbasic-S3cret-g7",
    ),
    (
        "multi-line literal",
        "[telemetry.mqtt]\nenabled = false\npassword = '''\nmlliteral-S3cret-i9\n'''  # note\n",
        "mlliteral-S3cret-i9",
    ),
]

# TOML that parses but that the schema refuses: every form again, plus a number and an array
SCHEMA_INVALID = f"""
[telemetry.mqtt]
enabled = false
password = {NUMERIC}

[cloud]
api_token = "token-S3cret-j10"
"client_secret" = "quoted-S3cret-k11"
auth.passphrase = "dotted-S3cret-l12"
creds = {{ user = "u", psk = "inline-S3cret-m13", nested = {{ token = "nested-S3cret-n14" }} }}
tokens = ["array-S3cret-o15", "array-S3cret-p16"]
private_key = '''
-----BEGIN PRIVATE KEY-----
pem-S3cret-q17
-----END PRIVATE KEY-----
'''
passwd = \"\"\"mlbasic-S3cret-r18 \\
  continued-S3cret-s19\"\"\"
pin_password = 91827364550

[cloud.secrets]
value = "table-S3cret-t20"
"""
SCHEMA_INVALID_SECRETS = [
    str(NUMERIC),
    "token-S3cret-j10",
    "quoted-S3cret-k11",
    "dotted-S3cret-l12",
    "inline-S3cret-m13",
    "nested-S3cret-n14",
    "array-S3cret-o15",
    "array-S3cret-p16",
    "pem-S3cret-q17",
    "BEGIN PRIVATE KEY",
    "mlbasic-S3cret-r18",
    "continued-S3cret-s19",
    "91827364550",
    "table-S3cret-t20",
]

# not TOML at all (a duplicate key, a broken line, an unterminated array): the raw-text redactor's case
NOT_TOML = (
    SCHEMA_INVALID
    + """
[telemetry.mqtt.tls]
"password" = "dup-S3cret-u21"
key_file = "/etc/cabinet-edge/client.key"
broken = = 1
token = [
  "multi-line-array-S3cret-v22",
  { secret = "x" },
"""
)
NOT_TOML_SECRETS = [*SCHEMA_INVALID_SECRETS, "dup-S3cret-u21", "multi-line-array-S3cret-v22"]


def _outputs(tmp: Path, text: str, *, run: bool, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """Every output a technician, the journal or the manufacturer sees for the config ``text``."""
    cfg = tmp / "config.toml"
    cfg.write_text(text)
    runner = CliRunner()
    out: dict[str, str] = {}
    with caplog.at_level(logging.DEBUG):
        for name, args in (
            ("check", ["config", "check", str(cfg)]),
            ("check --json", ["config", "check", "--json", str(cfg)]),
        ):
            res = runner.invoke(main, args, catch_exceptions=False)
            out[name] = res.stdout + res.stderr
        if run:
            res = runner.invoke(main, ["run", "--config", str(cfg)], catch_exceptions=False)
            assert res.exit_code == 2 and "config error:" in res.stderr
            out["run"] = res.stdout + res.stderr
        bundle = tmp / "diag.tar.gz"
        res = runner.invoke(
            main,
            ["diag", "-o", str(bundle), "--socket", str(tmp / "gone.sock"), "--config", str(cfg)],
            catch_exceptions=False,
        )
        assert res.exit_code == 0, res.output
        out["diag"] = res.stdout + res.stderr + gzip.decompress(bundle.read_bytes()).decode(errors="replace")
    out["redact_toml_text"] = redact_toml_text(text)
    out["log"] = caplog.text
    return out


def _assert_hidden(outputs: dict[str, str], secrets: list[str]) -> None:
    leaks = [f"{secret!r} in {where}" for where, text in outputs.items() for secret in secrets if secret in text]
    assert not leaks, "secrets leaked: " + "; ".join(leaks)


@pytest.mark.parametrize(("form", "toml", "secret"), VALID_FORMS, ids=[f[0] for f in VALID_FORMS])
def test_a_valid_config_never_shows_its_password(tmp_path, caplog, form, toml, secret):
    text = _base(tmp_path) + toml
    assert secret in (parse_config(text).telemetry.mqtt.password or "")  # a valid config, the secret in place
    outputs = _outputs(tmp_path, text, run=False, caplog=caplog)
    _assert_hidden(outputs, [secret, "second-line-h8"])
    assert REDACTED in outputs["check"] and REDACTED in outputs["check --json"]
    assert "OK" in outputs["check"]


def test_a_config_the_schema_refuses_never_echoes_a_secret(tmp_path, caplog):
    text = _base(tmp_path) + SCHEMA_INVALID
    tomllib.loads(text)  # valid TOML: only the schema refuses it
    outputs = _outputs(tmp_path, text, run=True, caplog=caplog)
    _assert_hidden(outputs, SCHEMA_INVALID_SECRETS)
    # the problem is still named, with file, line and key, just not the value
    assert "telemetry.mqtt.password" in outputs["check"] and "telemetry.mqtt.password" in outputs["run"]


def test_a_config_that_is_not_toml_never_shows_a_secret(tmp_path, caplog):
    text = _base(tmp_path) + NOT_TOML
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)
    outputs = _outputs(tmp_path, text, run=True, caplog=caplog)
    _assert_hidden(outputs, NOT_TOML_SECRETS)
    # what is not secret stays readable for the engineer
    assert 'key_file = "/etc/cabinet-edge/client.key"' in outputs["redact_toml_text"]
    assert "broken = = 1" in outputs["redact_toml_text"]


def test_config_errors_name_a_secret_key_without_its_value():
    with pytest.raises(ConfigError) as err:
        parse_config(f"[telemetry.mqtt]\npassword = {NUMERIC}\nport = 99999\n", "c.toml")
    problems = err.value.problems
    assert f"c.toml:2: telemetry.mqtt.password = {REDACTED}: Input should be a valid string" in problems
    assert not any(str(NUMERIC) in p for p in problems)
    assert any(p.startswith("c.toml:3: telemetry.mqtt.port = 99999") for p in problems)  # others still shown


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("mqtt_passwd", True),
        ("client_secret", True),
        ("api_token", True),
        ("passphrase", True),
        ("psk", True),
        ("private_key", True),
        ("api_key", True),
        ("key_file", False),  # a path to key material, not the material
        ("cert_file", False),
        ("ca_file", False),
        ("username", False),
        ("keepalive_s", False),
        ("host", False),
    ],
)
def test_which_keys_are_secret(key, secret):
    assert is_secret_key(key) is secret


def test_redact_hides_whole_secret_tables_and_arrays():
    data = {"cloud": {"secrets": {"value": "x"}, "tokens": ["a", "b"], "keep": 1}, "password": None}
    assert redact(data) == {"cloud": {"secrets": REDACTED, "tokens": REDACTED, "keep": 1}, "password": None}


def test_the_text_redactor_knows_tables_over_lines_and_arrays_of_tables():
    text = (
        "creds = {\n  user = 'u',\n  psk = 'toml11-S3cret-w23',\n}\n"  # TOML 1.1 inline table over lines
        "[[cloud.peers]]\nname = 'a'\npeer = [{ token = 'arr-S3cret-x24' }, { host = 'h' }]\n"
        "[cloud]\npassword =\n  'next-line-S3cret-y25'\nhost = 'kept'\n"
    )
    out = redact_toml_text(text)
    for secret in ("toml11-S3cret-w23", "arr-S3cret-x24", "next-line-S3cret-y25"):
        assert secret not in out
    assert "user = 'u'" in out and "host = 'h'" in out and "host = 'kept'" in out and "[[cloud.peers]]" in out


def test_a_parsed_secret_the_text_redactor_missed_falls_back_to_the_parsed_config(monkeypatch):
    from edge import redaction

    monkeypatch.setattr(redaction._TextRedactor, "run", lambda self: self.text)  # a redactor that misses
    out = redact_toml_text('[mqtt]\npassword = "missed-S3cret-z26"\nhost = "h"\n')
    assert "missed-S3cret-z26" not in out and REDACTED in out and '"host": "h"' in out
