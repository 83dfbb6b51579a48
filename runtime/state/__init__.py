"""Crash-safe records of sandboxes and containers (SQLite) and name reservations."""
