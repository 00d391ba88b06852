"""Alembic migrations of the inspection history (run programmatically by HistoryStore.migrate)."""
