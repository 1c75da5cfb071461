"""The serving layer: the PostgreSQL schema and idempotent writes, lambda views, the read-only role, Apache Superset, the operators' page."""
