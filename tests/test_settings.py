"""Settings: the README's table and `Settings` name the same variables, and bad values stop a
process before it starts rather than half-way through."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from paylayer.settings import DEFAULT_CATALOGUE_PATH, REPO_ROOT, ConfigError, Settings

README = REPO_ROOT / "README.md"


def readme_settings() -> set[str]:
    """Every variable in the first column of the README's "## Settings" table."""
    section = README.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_every_setting_is_in_the_readme_and_every_readme_row_is_a_setting() -> None:
    in_readme, in_code = readme_settings(), Settings.variables()
    assert in_code - in_readme == set(), "settings the README does not document"
    assert in_readme - in_code == set(), "README rows that no setting reads"


def test_every_setting_has_a_line_of_doc() -> None:
    undocumented = [f.name for f in fields(Settings) if not f.metadata.get("doc")]
    assert undocumented == []


def test_each_variable_is_read_into_its_field() -> None:
    # A variable named in Settings but never read would document a setting that does nothing.
    for f in fields(Settings):
        if f.type not in ("str", "Path"):
            continue
        value = "/x/y" if f.type == "Path" else f"value-of-{f.name}"
        read = getattr(Settings.from_env({f.metadata["env"]: value}), f.name)
        assert str(read) == value, f.metadata["env"]


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.payments_workers == Settings().payments_workers == 2
    assert settings.shutdown_grace_seconds == 10.0
    assert settings.catalogue_path == DEFAULT_CATALOGUE_PATH
    assert DEFAULT_CATALOGUE_PATH.is_file()
    assert settings.gateway_addr == "127.0.0.1:8080"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PAYMENTS_WORKERS", "0"),
        ("PAYMENTS_WORKERS", "two"),
        ("SHUTDOWN_GRACE_SECONDS", "ten"),
        ("SHUTDOWN_GRACE_SECONDS", "-1"),
        ("INBOX_RETENTION_DAYS", "-5"),
        ("STRIPE_LIVEMODE", "maybe"),
    ],
)
def test_a_malformed_number_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
