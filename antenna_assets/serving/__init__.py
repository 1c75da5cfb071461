"""The serving layer: lambda views, the read-only role, Apache Superset."""
