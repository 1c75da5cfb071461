"""The two jobs: the long-running speed layer, and one closed hour of the batch layer.

Selections name assets by key, so asset modules can import the tags from here. The instance
(dagster.yaml) allows one run at a time per tag value: one streaming run, one batch run.
"""

import dagster as dg

STREAMING_TAG = "antenna/streaming"
BATCH_TAG = "antenna/batch"

speed_layer_job = dg.define_asset_job(
    "speed_layer_job",
    selection=dg.AssetSelection.assets("devices_landing", "devices_dead_letter", "bytes_agg_antenna", "bytes_agg_user",
                                       "bytes_agg_app"),
    description="The streaming speed layer; runs until terminated (or, with trigger available_now, until the topic is drained).",
    tags={STREAMING_TAG: "speed_layer"},
)

hourly_batch_job = dg.define_asset_job(
    "hourly_batch_job",
    selection=dg.AssetSelection.assets("user_metadata", "raw_devices", "bytes_agg_antenna_1h", "bytes_agg_user_1h",
                                       "bytes_agg_app_1h", "users_over_quota_1h"),
    tags={BATCH_TAG: "hourly"},
    description="One closed hour: user_metadata snapshot, raw compaction, then the four hourly tables and their checks.",
)
