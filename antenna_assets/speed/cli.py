"""`antenna stream`: the speed layer from the command line, without Dagster."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from pydantic import ValidationError


def register(commands) -> None:
    parser = commands.add_parser("stream", help="run the speed layer (Spark Structured Streaming) in this process")
    parser.add_argument("--available-now", action="store_true", help="drain the topic, then stop (default: run until Ctrl-C)")
    parser.add_argument("--trigger-interval", help="micro-batch interval, e.g. '5 seconds' or '500 milliseconds' (default '500 milliseconds')")
    parser.add_argument("--window", help="event-time window of the speed tables, e.g. '5 minutes'")
    parser.add_argument("--watermark", help="allowed lateness, e.g. '1 minute'")
    parser.add_argument("--max-watermark-advance",
                        help="most one micro-batch may move the watermark forward, e.g. '1 minute' (the default)")
    parser.add_argument("--max-offsets-per-trigger", type=int, help="messages per micro-batch at most")
    parser.add_argument("--kafka-min-partitions", type=int,
                        help="Spark tasks reading Kafka per micro-batch, at least (0: twice Spark's default parallelism)")
    parser.add_argument("--kafka-fetch-max-wait-ms", type=int,
                        help="longest the broker holds the stream's Kafka fetches waiting for new records (default 10)")
    parser.add_argument("--kafka-api-timeout-ms", type=int,
                        help="longest a Kafka call of the stream waits for its answer (default 15000)")
    parser.add_argument("--kafka-offset-fetch-attempts", type=int,
                        help="tries of the driver's request for the latest offsets before the query fails (default 12)")
    parser.add_argument("--shuffle-partitions", type=int,
                        help="partitions of a micro-batch's shuffles (0: Spark's default parallelism)")
    parser.add_argument("--dead-letter-inline-bytes", type=int,
                        help="a rejected record up to this size is kept in dead_letter, a larger one in the lake "
                             "(default 65536)")
    parser.add_argument("--dead-letter-page-bytes", type=int,
                        help="most INSERT text of dead letters per statement, about (default 16 MiB)")
    parser.add_argument("--lake-rows-per-file", type=int,
                        help="valid messages per lake file a micro-batch writes, about (default 250,000)")
    parser.add_argument("--lake-write-behind-max-messages", type=int,
                        help="a micro-batch of at most this many valid messages writes its lake files while the next "
                             "batch runs (default 100,000; 0: every batch lands before the next)")
    parser.add_argument("--starting-offsets", help="earliest or latest, for a query without checkpoint")
    parser.add_argument("--metadata-refresh-seconds", type=float, help="re-read user_metadata at most this often")
    parser.add_argument("--progress-interval-seconds", type=float, help="how often progress is printed")
    parser.add_argument("--query-name", help="names the checkpoint folder and the ledger rows")
    parser.add_argument("--batch-attempts", type=int, help="tries of a failing micro-batch before stopping (default 3)")
    rules = parser.add_argument_group("contract rules (a message outside them is a dead letter)")
    rules.add_argument("--max-bytes", type=int, help="largest `bytes` of one message (default 10^12)")
    rules.add_argument("--min-timestamp", type=int, help="earliest `timestamp`, epoch seconds (default 2000-01-01)")
    rules.add_argument("--future-tolerance-seconds", type=int,
                       help="how far `timestamp` may be after the Kafka record's timestamp (default 600)")
    rules.add_argument("--max-text-length", type=int, help="longest id, antenna_id or app (default 256)")
    parser.set_defaults(handler=_stream)


def _stream(args: argparse.Namespace) -> int:
    from antenna_assets.resources import LakeResource, PostgresResource
    from antenna_assets.settings import Settings
    from antenna_assets.resources.spark import build_spark_session
    from antenna_assets.speed.config import SpeedLayerConfig
    from antenna_assets.speed.runtime import progress_summary, speed_layer_targets
    from antenna_assets.speed.layer import MicroBatchFailed, SpeedLayer, StreamFailed, run_until_stopped

    overrides = {k: v for k, v in vars(args).items()
                 if k in SpeedLayerConfig.model_fields and v is not None}
    if args.available_now:
        overrides["trigger"] = "available_now"
    try:
        config = SpeedLayerConfig(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f"--{first['loc'][0].replace('_', '-')}: " if first["loc"] else ""
        print(f"antenna stream: error: {where}{first['msg']}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    lake = LakeResource.from_settings(settings)
    lake.validate()  # a missing bucket or credentials fail here, before any Spark work
    postgres = PostgresResource(url=settings.postgres_url)
    postgres.migrate()
    layer = SpeedLayer(build_spark_session(settings, app_name="antenna_stream"), config,
                       speed_layer_targets(settings, lake, postgres.url, config))
    print(f"streaming {settings.topic} from {settings.kafka_bootstrap} into {lake.landing_path} "
          f"(checkpoint {lake.checkpoint_path(config.query_name)})", flush=True)

    def report(query, layer):
        print(json.dumps(progress_summary(query, layer)), flush=True)

    # Ctrl-C or a service manager's SIGTERM only asks the wait loop to stop the query: an exception
    # raised into a running Spark call could leave the process without stopping it cleanly.
    stop_requested = threading.Event()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda signum, frame: stop_requested.set())
    try:
        run_until_stopped(layer, on_progress=report, should_stop=stop_requested.is_set)
    except (MicroBatchFailed, StreamFailed) as exc:
        print(f"antenna stream: error: {exc}", file=sys.stderr)
        return 1
    if stop_requested.is_set():
        print("stopped: the query was stopped cleanly; the next run resumes from the checkpoint", flush=True)
    return 0
