"""The serving layer in Dagster's lineage: speed + batch tables -> lambda views -> the Superset dashboard."""

import dagster as dg

from antenna_assets.assets.speed import SPEED_LAYER_SPECS
from antenna_assets.serving.migration import migrate
from antenna_assets.resources import PostgresResource
from antenna_assets.serving.views import (LAMBDA_VIEWS, SERVING_DEAD_LETTERS_5M, SERVING_SPEED_VS_BATCH_1H,
                                          SERVING_STREAM_FRESHNESS, SERVING_USERS_OVER_QUOTA_1H)
from antenna_assets.settings import Settings
from antenna_assets.stack.superset import dashboard_url

SERVING_GROUP = "serving"
DASHBOARD_URL = dashboard_url(Settings.from_env())
_LINK = {"dashboard": dg.MetadataValue.url(DASHBOARD_URL)}

_VIEW_DEPS = {
    **{view.name: [view.batch.name, view.speed.name] for view in LAMBDA_VIEWS},
    SERVING_USERS_OVER_QUOTA_1H: ["users_over_quota_1h", "bytes_agg_user", "user_metadata"],
    SERVING_SPEED_VS_BATCH_1H: ["bytes_agg_antenna_1h", "bytes_agg_antenna"],
    SERVING_DEAD_LETTERS_5M: ["devices_dead_letter"],
    SERVING_STREAM_FRESHNESS: ["devices_landing"],
}
_VIEW_DESCRIPTIONS = {
    **{view.name: f"One row per {view.batch.key} and UTC hour: {view.batch.name} where the hour is batch-final, "
                  f"else {view.speed.name}'s 5-minute sums (source, latest_event_time)." for view in LAMBDA_VIEWS},
    SERVING_USERS_OVER_QUOTA_1H: "Users over quota per hour: final from users_over_quota_1h, provisional (speed "
                                 "sums vs the live quota) for hours the batch has not done.",
    SERVING_SPEED_VS_BATCH_1H: "Per batch-final hour: all antennas' batch total and the speed layer's total.",
    SERVING_DEAD_LETTERS_5M: "Dead letters per reason and 5-minute window, without raw values.",
    SERVING_STREAM_FRESHNESS: "The speed layer's latest applied event time and its lag behind now (UTC).",
}
# The views follow the batch: re-made and counted after an hourly table or user_metadata changed, once
# none is being written. Not eager(): the stream's tables are written by a run that never ends (always in
# progress), and the hourly parents miss most partitions since partitions_start; either holds eager() back.
FOLLOW_THE_BATCH = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).ignore(dg.AssetSelection.assets(*(spec.key for spec in SPEED_LAYER_SPECS))).with_label("follow the batch")
SERVING_VIEW_SPECS = [
    dg.AssetSpec(name, deps=deps, group_name=SERVING_GROUP, kinds={"postgres"}, description=_VIEW_DESCRIPTIONS[name],
                 metadata=_LINK, automation_condition=FOLLOW_THE_BATCH)
    for name, deps in _VIEW_DEPS.items()
]
# Not materialized by Dagster, so no automation condition: Superset imports it at its start, and its charts
# read the views live.
ANTENNA_USAGE_DASHBOARD = dg.AssetSpec(
    "antenna_usage_dashboard", deps=list(_VIEW_DEPS), group_name=SERVING_GROUP, kinds={"superset"}, metadata=_LINK,
    description="The Apache Superset dashboard 'Antenna usage' (antenna_assets/serving/superset_assets), imported "
                "at every Superset start; it reads the serving views as the read-only role antenna_reader.")


@dg.multi_asset(specs=SERVING_VIEW_SPECS, can_subset=True)
def serving_views(context: dg.AssetExecutionContext, postgres: PostgresResource):
    """(Re)creates the serving views (the idempotent migration) and records their rows per source."""
    with postgres.connect() as conn:
        migrate(conn)
        with conn.cursor() as cur:
            for key in sorted(context.selected_asset_keys):
                name = key.path[-1]
                cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", (name,))
                has_source = "source" in {row[0] for row in cur.fetchall()}
                cur.execute(f"SELECT {'source' if has_source else 'NULL'}, count(*) FROM {name} GROUP BY 1")
                counts = dict(cur.fetchall())
                per_source = {f"{source}_rows" if source else "rows": dg.MetadataValue.int(n) for source, n in counts.items()}
                yield dg.MaterializeResult(asset_key=key, metadata={
                    **_LINK, "dagster/row_count": dg.MetadataValue.int(sum(counts.values())),
                    **dict(sorted(per_source.items()))})
