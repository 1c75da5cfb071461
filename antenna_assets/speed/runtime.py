"""Wiring shared by the Dagster speed-layer asset and `antenna stream`."""

from __future__ import annotations

import json

from antenna_assets.kafka_client import librdkafka_config, spark_kafka_options
from antenna_assets.resources import LakeResource
from antenna_assets.settings import Settings
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, SpeedLayerTargets, kafka_lag


def speed_layer_targets(settings: Settings, lake: LakeResource, postgres_url: str,
                        config: SpeedLayerConfig) -> SpeedLayerTargets:
    return SpeedLayerTargets(
        kafka_bootstrap=settings.kafka_bootstrap,
        topic=settings.topic,
        landing_path=lake.landing_path,
        checkpoint_path=lake.checkpoint_path(config.query_name),
        postgres_url=postgres_url,
        kafka_options=spark_kafka_options(settings),
        kafka_client=librdkafka_config(settings),
        dead_letter_path=lake.dead_letter_path,
    )


def _end_offsets(progress: dict) -> dict:
    """The Kafka offsets up to which the last micro-batch read, per topic and partition."""
    offsets = {}
    for source in progress.get("sources", []):
        if isinstance(source.get("endOffset"), dict):
            offsets.update(source["endOffset"])
    return offsets


def progress_summary(query, layer: SpeedLayer) -> dict:
    """What a progress report says: counts, lag, event time and watermark."""
    stats = layer.stats
    progress = query.lastProgress or {}
    watermark = (stats.max_event_time - layer.watermark_delay) if stats.max_event_time else None
    return {
        "batches": stats.batches,
        "replayed_batches_skipped": stats.skipped_batches,
        "good_messages": stats.good_messages,
        "dead_letters": stats.bad_messages,
        "late_messages": stats.late_messages,
        "unknown_user_messages": stats.unknown_user_messages,
        "kafka_lag": kafka_lag(query),
        "kafka_offsets": json.dumps(_end_offsets(progress)) if progress else None,
        "input_rows_per_second": round(progress.get("processedRowsPerSecond", 0.0) or 0.0, 1),
        "max_event_time": stats.max_event_time.isoformat() if stats.max_event_time else None,
        "watermark": watermark.isoformat() if watermark else None,
        **{f"seconds_{step}": round(seconds, 1) for step, seconds in stats.step_seconds.items()},
    }
