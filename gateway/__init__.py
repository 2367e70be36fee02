"""The HTTP edge: verifies Stripe and Telegram webhooks and hands them to payments."""
