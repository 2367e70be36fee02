"""What users are told, as rules with no I/O: the texts per language (MESSAGES_PATH), the
outbox rows an effect writes (receipt, refund or revoke notice, failed renewal), and the
reminders a grant's end calls for.

Texts are sent without parse_mode: a value (a sku title, a link) can carry no markup, and a
template may name only the placeholders its kind offers, checked when the file is loaded.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

DEFAULT_LANGUAGE = "en"
# Telegram's limit for a message's text, in characters (after entity parsing, none here).
MAX_TEXT = 4096

# Each kind and the placeholders its template may use.
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "receipt": frozenset({"sku", "tier", "until"}),
    "receipt_lifetime": frozenset({"sku", "tier"}),
    "revoked": frozenset({"sku", "tier"}),
    "payment_failed": frozenset({"sku", "tier"}),
    "reminder_3d": frozenset({"sku", "tier", "until"}),
    "reminder_1d": frozenset({"sku", "tier", "until"}),
    "ended": frozenset({"sku", "tier"}),
    "renew": frozenset({"link", "sku"}),
    # A line of a receipt: the buyer's own invite link to a chat their tier gives.
    "invite": frozenset({"link", "tier"}),
}
# Lines added to a message, not messages of their own.
LINE_KINDS = ("renew", "invite")
MESSAGE_KINDS = tuple(kind for kind in PLACEHOLDERS if kind not in LINE_KINDS)
REMINDER_KINDS = ("reminder_3d", "reminder_1d", "ended")
# How long before the end of access each reminder is due.
REMINDER_LEADS: dict[str, timedelta] = {
    "reminder_3d": timedelta(days=3),
    "reminder_1d": timedelta(days=1),
    "ended": timedelta(0),
}


class MessagesFileError(ValueError):
    pass


@dataclass(frozen=True)
class Texts:
    """Templates per language and kind; `skus` optionally names each sku per language."""

    templates: Mapping[str, Mapping[str, str]]
    sku_titles: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def language_of(self, language_code: str) -> str:
        """The user's language if the file has it (`pt-br` falls back to `pt`), else English."""
        code = (language_code or "").strip().lower()
        for candidate in (code, code.split("-")[0]):
            if candidate in self.templates:
                return candidate
        return DEFAULT_LANGUAGE

    def sku_title(self, language: str, sku: str) -> str:
        titles = self.sku_titles.get(language) or self.sku_titles.get(DEFAULT_LANGUAGE) or {}
        return titles.get(sku) or sku.replace("_", " ").title()

    def line(self, kind: str, language_code: str, values: Mapping[str, str]) -> str:
        """One added line (`renew`, `invite`) in the user's language, else English."""
        own = self.templates[self.language_of(language_code)]
        template = own.get(kind) or self.templates[DEFAULT_LANGUAGE][kind]
        return template.format_map({name: str(values.get(name, "")) for name in PLACEHOLDERS[kind]})

    def render(
        self,
        kind: str,
        language_code: str,
        values: Mapping[str, str],
        *,
        link: str = "",
        extra_lines: list[str] | None = None,
    ) -> str:
        """The message's text: its template filled in, a renewal line when there is a link,
        then any extra lines (e.g. invite links), cut to Telegram's limit."""
        language = self.language_of(language_code)
        own = self.templates[language]
        english = self.templates[DEFAULT_LANGUAGE]
        template = own.get(kind) or english[kind]
        text = template.format_map({name: str(values.get(name, "")) for name in PLACEHOLDERS[kind]})
        lines = [text]
        if link:
            renew = own.get("renew") or english["renew"]
            lines.append(renew.format_map({"link": link, "sku": str(values.get("sku", ""))}))
        lines.extend(line for line in extra_lines or [] if line)
        return "\n\n".join(lines)[:MAX_TEXT]


def _check_template(language: str, kind: str, template: Any) -> str:
    if not isinstance(template, str) or not template.strip():
        raise MessagesFileError(f"{language}.{kind}: a non-empty text is required")
    try:
        fields = [name for _, name, spec, conv in string.Formatter().parse(template) if name]
        specs = [(spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name]
    except ValueError as error:
        raise MessagesFileError(f"{language}.{kind}: {error}") from None
    # Only plain names: `{sku.__class__}` or `{until!r:>9}` are refused.
    for name in fields:
        if name not in PLACEHOLDERS[kind]:
            allowed = ", ".join(sorted(PLACEHOLDERS[kind]))
            raise MessagesFileError(
                f"{language}.{kind}: unknown placeholder {{{name}}} (may use: {allowed})"
            )
    if any(spec or conv for spec, conv in specs):
        raise MessagesFileError(f"{language}.{kind}: placeholders take no format or conversion")
    return template


def load_texts(path: Path) -> Texts:
    """Read and check the messages file: English complete, other languages any subset."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise MessagesFileError(f"cannot read messages file {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("languages"), dict):
        raise MessagesFileError(f"{path}: expected a `languages:` mapping")
    templates: dict[str, dict[str, str]] = {}
    titles: dict[str, dict[str, str]] = {}
    for language, entries in document["languages"].items():
        if not isinstance(language, str) or not isinstance(entries, dict):
            raise MessagesFileError(f"{path}: language {language!r} must map kinds to texts")
        code = language.lower()
        templates[code] = {}
        for kind, template in entries.items():
            if kind == "skus":
                if not isinstance(template, dict):
                    raise MessagesFileError(f"{code}.skus: expected sku: title pairs")
                titles[code] = {str(k): str(v) for k, v in template.items()}
                continue
            if kind not in PLACEHOLDERS:
                raise MessagesFileError(f"{code}: unknown message kind {kind!r}")
            templates[code][kind] = _check_template(code, kind, template)
    missing = set(PLACEHOLDERS) - set(templates.get(DEFAULT_LANGUAGE, {}))
    if missing:
        raise MessagesFileError(f"{path}: English lacks {', '.join(sorted(missing))}")
    return Texts(templates, titles)


# --- outbox rows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A row for the outbox; `dedupe_key` makes a replayed effect write it once."""

    dedupe_key: str
    kind: str
    user_id: str
    telegram_user_id: int | None
    language: str
    params: dict[str, Any]
    due_at: datetime | None = None  # None: now
    entitlement: str | None = None
    ends_at: datetime | None = None

    def row(self) -> dict[str, Any]:
        return {
            "dedupe_key": self.dedupe_key,
            "kind": self.kind,
            "user_id": self.user_id,
            "telegram_user_id": self.telegram_user_id,
            "language": self.language,
            "params": self.params,
            "due_at": self.due_at,
            "entitlement": self.entitlement,
            "ends_at": self.ends_at,
        }


@dataclass(frozen=True)
class Recipient:
    user_id: str
    telegram_user_id: int | None = None
    language: str = ""


def receipt(
    recipient: Recipient,
    *,
    provider: str,
    payment_key: str,
    sku: str,
    entitlement: str,
    lifetime: bool,
) -> Message:
    """One receipt per payment, however many of its events grant (a charge and its intent).
    When access ends is read as it is sent: stacked grants included."""
    return Message(
        dedupe_key=f"receipt:{provider}:{payment_key}",
        kind="receipt_lifetime" if lifetime else "receipt",
        user_id=recipient.user_id,
        telegram_user_id=recipient.telegram_user_id,
        language=recipient.language,
        params={"sku": sku, "tier": entitlement, "provider": provider},
    )


def revoked(
    recipient: Recipient, *, provider: str, payment_key: str, sku: str, entitlement: str
) -> Message:
    return Message(
        dedupe_key=f"revoked:{provider}:{payment_key}",
        kind="revoked",
        user_id=recipient.user_id,
        telegram_user_id=recipient.telegram_user_id,
        language=recipient.language,
        params={"sku": sku, "tier": entitlement, "provider": provider},
    )


def payment_failed(
    recipient: Recipient, *, event_ref: str, sku: str, entitlement: str, provider: str
) -> Message:
    return Message(
        dedupe_key=f"payment_failed:{event_ref}",
        kind="payment_failed",
        user_id=recipient.user_id,
        telegram_user_id=recipient.telegram_user_id,
        language=recipient.language,
        params={"sku": sku, "tier": entitlement, "provider": provider},
    )


def reminders(
    recipient: Recipient, *, sku: str, entitlement: str, ends_at: datetime, now: datetime
) -> list[Message]:
    """The reminders of access that ends at `ends_at`, keyed by that end (a later grant that
    moves it writes its own and supersedes these). Of the pre-end reminders already due, only
    the nearest is kept: access that ends in two days gets the 1-day one, not a late 3-day."""
    left = ends_at - now
    before_end = [kind for kind in REMINDER_KINDS if kind != "ended"]  # longest lead first
    chosen = []
    for index, kind in enumerate(before_end):
        shorter = REMINDER_LEADS[before_end[index + 1]] if index + 1 < len(before_end) else None
        due_later = left > REMINDER_LEADS[kind]
        # Already due: kept only when the next, shorter one is not due as well.
        nearest_due = left > timedelta(0) and (shorter is None or left > shorter)
        if due_later or nearest_due:
            chosen.append(kind)
    chosen.append("ended")
    stamp = int(ends_at.timestamp())
    return [
        Message(
            dedupe_key=f"{kind}:{recipient.user_id}:{entitlement}:{stamp}",
            kind=kind,
            user_id=recipient.user_id,
            telegram_user_id=recipient.telegram_user_id,
            language=recipient.language,
            params={"sku": sku, "tier": entitlement, "until": ends_at.isoformat()},
            due_at=ends_at - REMINDER_LEADS[kind],
            entitlement=entitlement,
            ends_at=ends_at,
        )
        for kind in chosen
    ]


def next_shorter_lead(kind: str) -> timedelta:
    """The lead of the reminder that follows this one before the end (0 for the last)."""
    shorter = [lead for lead in REMINDER_LEADS.values() if lead < REMINDER_LEADS[kind]]
    return max(shorter, default=timedelta(0))


def telegram_sender(update: Mapping[str, Any]) -> tuple[int | None, str]:
    """Who a Telegram update came from, and their language_code (either may be missing)."""
    for container_name in ("message", "pre_checkout_query", "subscription", "callback_query"):
        container = update.get(container_name)
        if not isinstance(container, dict):
            continue
        user = container.get("from") or container.get("user")
        if isinstance(user, dict):
            user_id = user.get("id")
            language = user.get("language_code")
            valid_id = isinstance(user_id, int) and not isinstance(user_id, bool)
            valid_id = valid_id and 0 < user_id < 2**63  # type: ignore[operator]
            return (
                user_id if valid_id else None,  # type: ignore[return-value]
                _language_code(language),
            )
    return None, ""


def _language_code(value: Any) -> str:
    """An IETF language tag as Telegram sends it (`en`, `pt-br`); anything else is dropped,
    so a hostile payload cannot make the row that commits with a payment fail."""
    if isinstance(value, str) and _LANGUAGE.fullmatch(value):
        return value.lower()
    return ""


_LANGUAGE = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,2}")


def format_until(value: str) -> str:
    """An ISO timestamp as shown to users: a date and time in UTC."""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return ""
