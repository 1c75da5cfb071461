"""Retention: what each store keeps, and the removal of the rest, never of anything still needed.

One module per store (landing files, the speed layer's 5-minute rows, the ledger), each Dagster-free: the
retention asset (assets/retention.py) runs them on a schedule and records what each removed; dead letters
reuse the archive-then-delete of speed/dead_letter_retention.py. `antenna storage` (storage.py) prints
each store's size and oldest data. The policy, store by store: README, Retention.
"""
