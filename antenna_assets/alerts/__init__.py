"""Alerts: rules decide them into an outbox table (outbox.py) in the transaction that decides them; a sender
delivers them by email and signed webhook (sender.py, channels.py)."""
