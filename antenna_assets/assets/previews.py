"""Row previews in Dagster's event metadata, without personal data.

Users' names and emails are personal data; event metadata is kept for as long as the instance keeps
runs and is shown to everyone with access to the UI, so previews leave those columns out unless
ANTENNA_METADATA_PERSONAL_DATA=1. Counts and the other columns stay.
"""

from __future__ import annotations

from typing import Sequence

import dagster as dg

from antenna_assets.settings import Settings, env_name

PERSONAL_COLUMNS = frozenset({"name", "email"})


def preview_table(columns: Sequence[str], rows: Sequence[Sequence], settings: Settings | None = None) -> dg.MetadataValue:
    """`rows` as a Markdown table of `columns`, personal ones left out unless the setting allows them."""
    allowed = (settings or Settings.from_env()).metadata_personal_data
    shown = [i for i, column in enumerate(columns) if allowed or column not in PERSONAL_COLUMNS]
    hidden = [column for column in columns if column in PERSONAL_COLUMNS and not allowed]
    lines = ["| " + " | ".join(columns[i] for i in shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(str(row[i]) for i in shown) + " |" for row in rows]
    if hidden:
        lines.append(f"\n({', '.join(hidden)} left out: personal data; "
                     f"{env_name('metadata_personal_data')}=1 shows them)")
    return dg.MetadataValue.md("\n".join(lines))
