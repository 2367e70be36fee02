"""The payments schema: the inbox of provider events and one row per purchase."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

SCHEMA = "payments"
metadata = MetaData(schema=SCHEMA)
# NOTIFY'd on every insert into the inbox (a trigger of migration 0003): workers wake at once.
INBOX_CHANNEL = "payments_inbox"

# Every verified event, committed before the provider hears 200, processed exactly once.
inbox = Table(
    "inbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("provider", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    # The verified body exactly as it came: faithful, and no JSON re-encoding on the hot path.
    Column("payload", LargeBinary, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("error", Text, nullable=False, server_default=""),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("payment_key", Text),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("processed_at", DateTime(timezone=True)),
    # A worker's claim: until then no other worker takes the event; past it, one may (the
    # claimant crashed), and applies it again, which its idempotent effects allow.
    Column("claimed_until", DateTime(timezone=True)),
    Column("claimed_by", Text),
    Column("replayed_by", Text),  # the caller name of the last replay
    UniqueConstraint("provider", "event_id", name="inbox_provider_event_id_key"),
    CheckConstraint(
        "status IN ('pending', 'processed', 'ignored', 'failed')", name="inbox_status_check"
    ),
)
# The worker's queue: only pending rows, in the order they are due.
Index(
    "inbox_pending_due_idx",
    inbox.c.next_attempt_at,
    postgresql_where=text("status = 'pending'"),
)
Index("inbox_status_type_idx", inbox.c.status, inbox.c.event_type, inbox.c.id)
Index("inbox_failed_idx", inbox.c.id, postgresql_where=text("status = 'failed'"))
Index("inbox_payment_key_idx", inbox.c.provider, inbox.c.payment_key)
# The console's outcomes per hour and its date filter read a range of received times.
Index("inbox_received_at_idx", inbox.c.received_at)
# Old processed and ignored events leave the inbox after INBOX_RETENTION_DAYS.
Index(
    "inbox_done_idx",
    inbox.c.processed_at,
    postgresql_where=text("status IN ('processed', 'ignored')"),
)

# One row per purchase, keyed by the payment intent (else the charge) or the Telegram charge id.
payments = Table(
    "payments",
    metadata,
    Column("provider", Text, nullable=False),
    Column("payment_key", Text, nullable=False),
    Column("user_id", Text),
    Column("sku", Text),
    Column("status", Text, nullable=False),
    Column("amount", BigInteger, nullable=False, server_default="0"),
    Column("currency", Text, nullable=False, server_default=""),
    Column("amount_refunded", BigInteger, nullable=False, server_default="0"),
    Column("subscription_id", Text),
    Column("subscription_state", Text, nullable=False, server_default=""),
    Column("purchased_at", DateTime(timezone=True)),
    # The invoice this purchase paid for (a subscription period), when it was one.
    Column("invoice_id", Text),
    # Insertion order, for paging the ledger without OFFSET.
    Column("seq", BigInteger, Identity(always=False), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("provider", "payment_key", name="payments_pkey"),
)
Index("payments_user_idx", payments.c.user_id, payments.c.created_at)
Index("payments_subscription_idx", payments.c.subscription_id)
Index("payments_seq_idx", payments.c.seq, unique=True)
Index("payments_user_seq_idx", payments.c.user_id, payments.c.seq)

# Stripe from API 2025-03-31.basil: the payment (intent or charge) that paid an invoice. Its
# refund or dispute revokes the invoice's grant, and its own charge event grants nothing.
invoice_payments = Table(
    "invoice_payments",
    metadata,
    Column("provider", Text, nullable=False),
    Column("payment_key", Text, nullable=False),
    Column("invoice_id", Text, nullable=False),
    Column("linked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("provider", "payment_key", name="invoice_payments_pkey"),
)
Index("invoice_payments_invoice_idx", invoice_payments.c.provider, invoice_payments.c.invoice_id)

# One row per subscription (Stripe's, or a Stars one: `<telegram user>:<sku>`): the merge of
# every change its events told, in whatever order they came (payments_service/subscriptions.py).
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("provider", Text, nullable=False),
    Column("subscription_id", Text, nullable=False),
    Column("user_id", Text),
    Column("sku", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("current_period_start", DateTime(timezone=True)),
    Column("current_period_end", DateTime(timezone=True)),
    Column("cancel_at_period_end", Boolean, nullable=False, server_default="false"),
    Column("canceled_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    # The time of the newest change merged in: what an older change is compared with.
    Column("observed_at", DateTime(timezone=True), nullable=False),
    # Per field, the time of the change that set it (epoch seconds): see `subscriptions.merge`.
    Column("stated", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("provider", "subscription_id", name="subscriptions_pkey"),
)
Index("subscriptions_user_idx", subscriptions.c.user_id, subscriptions.c.created_at)

MESSAGE_STATUSES = (
    "pending",  # to send once due
    "sending",  # claimed: a sender is calling Telegram
    "sent",
    "failed",  # Telegram refused it (400) or it was tried too often: kept with its reason
    "unknown",  # its sender died mid-call: it may have gone out, so it is not sent again
    "unreachable",  # the user blocked the bot
    "superseded",  # a reminder for an end that has moved
    "no_chat",  # the user has no Telegram identity to write to
)

# The outbox: every message to a user, written in the transaction of the effect it tells of,
# keyed so that a replayed event writes it once (payments_service/outbox.py sends them).
messages = Table(
    "messages",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("dedupe_key", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("telegram_user_id", BigInteger),
    Column("language", Text, nullable=False, server_default=""),
    Column("params", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # Reminders: the end of access they announce (checked again before sending).
    Column("entitlement", Text),
    Column("ends_at", DateTime(timezone=True)),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("error", Text, nullable=False, server_default=""),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("due_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("claimed_until", DateTime(timezone=True)),
    Column("claimed_by", Text),
    Column("telegram_message_id", BigInteger),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("sent_at", DateTime(timezone=True)),
    UniqueConstraint("dedupe_key", name="messages_dedupe_key_key"),
    CheckConstraint(
        "status IN ('pending', 'sending', 'sent', 'failed', 'unknown', 'unreachable',"
        " 'superseded', 'no_chat')",
        name="messages_status_check",
    ),
)
Index(
    "messages_due_idx",
    messages.c.due_at,
    postgresql_where=text("status IN ('pending', 'sending')"),
)
Index("messages_user_idx", messages.c.user_id, messages.c.id)
Index(
    "messages_reminders_idx",
    messages.c.user_id,
    messages.c.entitlement,
    postgresql_where=text("status = 'pending' AND entitlement IS NOT NULL"),
)

# What payments knows of a Telegram user: the language of their last update, and whether they
# blocked the bot.
telegram_users = Table(
    "telegram_users",
    metadata,
    Column("telegram_user_id", BigInteger, primary_key=True),
    Column("language_code", Text, nullable=False, server_default=""),
    Column("unreachable_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Channel access (payments_service/channels.py). Who is in each chat, as the chat_member
# updates (and our own approvals and removals) last told it: one row per chat and user.
chat_members = Table(
    "chat_members",
    metadata,
    Column("chat_id", BigInteger, nullable=False),
    Column("telegram_user_id", BigInteger, nullable=False),
    # Telegram's ChatMember status: creator, administrator, member, restricted, left, kicked.
    Column("status", Text, nullable=False),
    # The time of the update that said so: an older update never overwrites a newer one.
    Column("observed_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("chat_id", "telegram_user_id", name="chat_members_pkey"),
)

# Join requests seen, with what was decided (pending until approved or declined).
chat_join_requests = Table(
    "chat_join_requests",
    metadata,
    Column("chat_id", BigInteger, nullable=False),
    Column("telegram_user_id", BigInteger, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("invite_link", Text),
    Column("decision", Text, nullable=False, server_default="pending"),
    Column("decided_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("chat_id", "telegram_user_id", name="chat_join_requests_pkey"),
)

# Invite links made for one user and one chat (never handed to anyone else); the receipt
# reads them. A link needs a join request, so a forwarded link lets no one else in.
chat_invite_links = Table(
    "chat_invite_links",
    metadata,
    Column("chat_id", BigInteger, nullable=False),
    Column("telegram_user_id", BigInteger, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("invite_link", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("chat_id", "telegram_user_id", name="chat_invite_links_pkey"),
    UniqueConstraint("invite_link", name="chat_invite_links_link_key"),
)

# Every approval, decline and removal, with its reason.
chat_access_audit = Table(
    "chat_access_audit",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("chat_id", BigInteger, nullable=False),
    Column("telegram_user_id", BigInteger, nullable=False),
    Column("user_id", Text),
    # approved, declined, removed, invited
    Column("action", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("id", name="chat_access_audit_pkey"),
)
Index("chat_access_audit_chat_idx", chat_access_audit.c.chat_id, chat_access_audit.c.id)
