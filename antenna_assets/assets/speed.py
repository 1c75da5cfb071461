"""The speed layer's tables, materialized by the long-running streaming job."""

import dagster as dg

from antenna_assets.jobs import STREAMING_TAG
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.settings import Settings
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.heartbeat import Heartbeat, RunDeclaredDead
from antenna_assets.speed.runtime import progress_summary, speed_layer_targets
from antenna_assets.speed.layer import MicroBatchFailed, SpeedLayer, StreamFailed, run_until_stopped

devices_topic = dg.AssetSpec(
    "devices_topic",
    description="Kafka topic `devices`: one JSON usage report per message, sent by the antennas.",
    group_name="sources",
    kinds={"kafka"},
)

SPEED_GROUP = "speed"
SPEED_LAYER_SPECS = [
    dg.AssetSpec("devices_landing", deps=[devices_topic, "user_metadata"], group_name=SPEED_GROUP,
                 kinds={"spark", "parquet"},
                 description="Every valid message, enriched with the user's email, as Parquet in the lake under "
                             "landing/devices/year=/month=/day=/hour=/batch= (UTC event time)."),
    dg.AssetSpec("devices_dead_letter", deps=[devices_topic], group_name=SPEED_GROUP, kinds={"postgres"},
                 description="Messages that failed validation, with raw value, reason, topic, partition, offset."),
    dg.AssetSpec("bytes_agg_antenna", deps=[devices_topic], group_name=SPEED_GROUP, kinds={"spark", "postgres"},
                 description="Bytes per antenna and 5-minute event-time window, updated every micro-batch."),
    dg.AssetSpec("bytes_agg_user", deps=[devices_topic], group_name=SPEED_GROUP, kinds={"spark", "postgres"},
                 description="Bytes per user id and 5-minute event-time window, updated every micro-batch."),
    dg.AssetSpec("bytes_agg_app", deps=[devices_topic], group_name=SPEED_GROUP, kinds={"spark", "postgres"},
                 description="Bytes per app and 5-minute event-time window, updated every micro-batch."),
]

@dg.multi_asset(specs=SPEED_LAYER_SPECS, can_subset=False, op_tags={STREAMING_TAG: "speed_layer"})
def speed_layer(context: dg.AssetExecutionContext, config: SpeedLayerConfig, spark: SparkResource,
                lake: LakeResource, postgres: PostgresResource):
    """Spark Structured Streaming over Kafka: lands Parquet and keeps the 5-minute totals exactly once."""
    lake.validate()  # a missing bucket or credentials fail here, before any Spark work
    postgres.migrate()
    settings = Settings.from_env()

    def report(query, layer: SpeedLayer) -> None:
        summary = {k: v for k, v in progress_summary(query, layer).items() if v is not None}
        context.log.info(f"speed layer progress: {summary}")
        context.log_event(dg.AssetObservation(asset_key="devices_landing", metadata=summary))

    heartbeat = Heartbeat(postgres.url, context.run.run_id, config.query_name, settings.stream_heartbeat_seconds)
    try:
        # From its first seconds, and while Spark starts (on a cluster, its executors): a slow start is no dead run.
        with heartbeat.beating():
            layer = SpeedLayer(spark.session(), config, speed_layer_targets(settings, lake, postgres.url, config))
        query = run_until_stopped(layer, on_progress=report, heartbeat=heartbeat)
    except MicroBatchFailed as exc:
        # Seen on the asset's page as well as on the failed run; the sensor relaunches with back-off.
        context.log_event(dg.AssetObservation(asset_key="devices_landing", metadata={
            "failing_micro_batch": dg.MetadataValue.text(str(exc))}))
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    except StreamFailed as exc:  # e.g. Kafka refused the credentials: one line, Spark's trace is in the run's stderr
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    except RunDeclaredDead as exc:  # already marked failed by the sensor; stopped so only its successor streams
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    finally:
        heartbeat.close()
    summary = {k: v for k, v in progress_summary(query, layer).items() if v is not None}
    for spec in SPEED_LAYER_SPECS:
        yield dg.MaterializeResult(asset_key=spec.key, metadata=summary)

