"""Inspection history of `normalcy serve --db`: every decision in a database (SQLAlchemy + Alembic), labels, drift.

Needs the `serve` extra (SQLAlchemy, Alembic; psycopg for PostgreSQL). Layout: `schema` (tables), `migrations/`
(Alembic, shipped with the package), `store` (open, migrate, query, label), `media` (thumbnails and masks as
files), `writer` (bounded queue, spool and replay), `capture` (what is kept of an image), `recorder` (what the
service calls per request, plus the drift monitor), `routes` (the /history and /drift endpoints).
"""
