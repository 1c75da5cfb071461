"""The batch layer's asset checks: their names (one place, so sensors, tests and docs agree), which
table each applies to, and how each judges what PostgreSQL received."""

import dagster as dg

from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP

NON_NEGATIVE_SUMS = "non_negative_sums"
NON_EMPTY_WHEN_RAW_NON_EMPTY = "non_empty_when_raw_non_empty"
RECONCILES_WITH_RAW = "reconciles_with_raw_hour"
AGREES_WITH_SPEED_LAYER = "agrees_with_speed_layer"
ALL_USERS_KNOWN = "all_users_known"

SUM_TABLES = ("bytes_agg_antenna_1h", "bytes_agg_user_1h", "bytes_agg_app_1h")
# Hourly tables with a 5-minute twin in the speed layer: the lambda check compares the two.
SPEED_TWIN = {"bytes_agg_antenna_1h": BYTES_AGG_ANTENNA, "bytes_agg_app_1h": BYTES_AGG_APP}


def hourly_check_specs(tables) -> list[dg.AssetCheckSpec]:
    return [
        *(dg.AssetCheckSpec(NON_NEGATIVE_SUMS, asset=name) for name in tables),
        *(dg.AssetCheckSpec(NON_EMPTY_WHEN_RAW_NON_EMPTY, asset=name) for name in SUM_TABLES),
        *(dg.AssetCheckSpec(RECONCILES_WITH_RAW, asset=name) for name in SUM_TABLES),
        *(dg.AssetCheckSpec(AGREES_WITH_SPEED_LAYER, asset=name) for name in SPEED_TWIN),
        dg.AssetCheckSpec(ALL_USERS_KNOWN, asset="bytes_agg_user_1h"),
    ]


def check_results(context, tables, stored, raw, speed):
    selected_checks = {(key.asset_key.path[-1], key.name) for key in context.selected_asset_check_keys}
    raw_rows = sum(s.rows for s in raw)
    raw_bytes = sum(s.total_bytes for s in raw)
    unknown_bytes = sum(row[2] for row in tables["unknown_users"])

    for asset, check in sorted(selected_checks):
        rows = tables.get(asset, [])
        hours = stored.get(asset, {})  # per hour: rows, sum, negative rows, as PostgreSQL holds them
        if check == NON_NEGATIVE_SUMS:
            negative = sum(n for _, _, n in hours.values())
            yield dg.AssetCheckResult(asset_key=asset, check_name=check, passed=not negative,
                                      metadata={"negative_rows": negative})
        elif check == NON_EMPTY_WHEN_RAW_NON_EMPTY:
            empty_hours = [s.hour for s in raw if s.rows and not hours.get(s.hour, (0,))[0]]
            yield dg.AssetCheckResult(asset_key=asset, check_name=check, passed=not empty_hours,
                                      metadata={"raw_rows": raw_rows, "hours_missing_rows": len(empty_hours)})
        elif check == RECONCILES_WITH_RAW:
            table_bytes = (sum(total for _, total, _ in hours.values())
                           + (unknown_bytes if asset == "bytes_agg_user_1h" else 0))
            yield dg.AssetCheckResult(asset_key=asset, check_name=check, passed=table_bytes == raw_bytes,
                                      metadata={"raw_bytes": raw_bytes, "table_bytes": table_bytes,
                                                "difference": table_bytes - raw_bytes})
        elif check == AGREES_WITH_SPEED_LAYER:
            yield speed_agreement(asset, rows, speed[asset])
        elif check == ALL_USERS_KNOWN:
            unknown = sorted({row[0] for row in tables["unknown_users"]})
            yield dg.AssetCheckResult(asset_key=asset, check_name=check, passed=not unknown,
                                      severity=dg.AssetCheckSeverity.WARN, metadata={
                                          "unknown_ids": len(unknown), "unknown_bytes": unknown_bytes,
                                          "examples": ", ".join(unknown[:10]) or "none"})


def speed_agreement(asset: str, rows, speed_sums) -> dg.AssetCheckResult:
    """The lambda check: batch totals vs the speed layer's 5-minute totals of the same hours.

    Differences are expected only for events the speed layer dropped as later than its watermark."""
    batch_sums = {(row[0], row[1]): row[2] for row in rows}
    hours_in_both = {h for _, h in batch_sums} & {h for _, h in speed_sums}
    if not hours_in_both:
        return dg.AssetCheckResult(asset_key=asset, check_name=AGREES_WITH_SPEED_LAYER, passed=True,
                                   metadata={"compared_hours": 0, "note": "the speed layer has no data for these hours"})
    keys = {k for k in batch_sums.keys() | speed_sums.keys() if k[1] in hours_in_both}
    differences = {k: batch_sums.get(k, 0) - speed_sums.get(k, 0) for k in keys}
    differing = {k: d for k, d in differences.items() if d}
    batch_total = sum(batch_sums.get(k, 0) for k in keys)
    return dg.AssetCheckResult(
        asset_key=asset, check_name=AGREES_WITH_SPEED_LAYER, passed=not differing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"compared_hours": len(hours_in_both), "differing_keys": len(differing),
                  "batch_minus_speed_bytes": sum(differences.values()),
                  "difference_pct": round(100.0 * sum(differences.values()) / batch_total, 4) if batch_total else 0.0,
                  "examples": ", ".join(f"{k[0]}@{k[1]:%H:00}: {d:+d}" for k, d in list(differing.items())[:5]) or "none"})
