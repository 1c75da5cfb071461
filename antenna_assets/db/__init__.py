"""The serving database: schema and idempotent writes."""
