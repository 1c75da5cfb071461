"""The operators' web page for `user_metadata`: sign-in, users and quotas, audit trail, usage.

Only `app` imports the web framework; the rest (validation, queries, schema) is plain Python.
"""
