"""What the contract rules cost: the speed layer's parse (classification of every record into a
valid event or a dead-letter reason) against a plain `from_json` of the same records, in one Spark
session, on generated Kafka-shaped rows (no broker: the parse alone).

    python -m bench.bench_parse [--messages N] [--poison-fraction F] [--quick] [--no-record]
"""

from __future__ import annotations

import argparse
import time

from pyspark.sql import functions as F

from antenna_assets.resources.spark import build_spark_session
from antenna_assets.transforms.devices import DEVICE_MESSAGE_SCHEMA, parse_device_messages
from bench.common import record_run

SECTION = "## Parse: the contract rules"
INTRO = ("The speed layer's parse with every contract rule (README: contract rules) against a plain `from_json`\n"
         "of the same records, same session, best of 3 noop writes; generated rows, no broker.\n\n")
HEADER = ("| date | machine | command | messages | from_json (ev/s) | parse with rules (ev/s) | ratio |\n"
          "|---|---|---|---|---|---|---|")


def kafka_rows(spark, messages: int, poison_fraction: float):
    """Contract-shaped records (20 users, 5 antennas, 5 apps), a fraction of them numbers in text fields."""
    n = F.col("id")
    poison = F.rand(7) < poison_fraction
    user = F.format_string("\"00000000-0000-0000-0000-0000000000%02d\"", (n % 20 + 1).cast("int"))
    value = F.format_string('{"bytes":%d,"timestamp":%d,"app":"%s","id":%s,"antenna_id":"%s"}',
                            (n % 10000).cast("int"), F.lit(1767225600) + n % 3600,
                            F.element_at(F.array(*map(F.lit, ["SKYPE", "TELEGRAM", "FACETIME", "FACEBOOK",
                                                              "WHATSAPP"])), (n % 5 + 1).cast("int")),
                            F.when(poison, F.lit("123")).otherwise(user),
                            F.format_string("%d%d%d%d%d%d%d%d-1111-1111-1111-111111111111", *([n % 5] * 8)))
    return (spark.range(messages)
            .select(F.lit(None).cast("binary").alias("key"), F.encode(value, "UTF-8").alias("value"),
                    F.lit("devices").alias("topic"), (n % 3).cast("int").alias("partition"), n.alias("offset"),
                    F.timestamp_seconds(F.lit(1767229200)).alias("timestamp"))
            .cache())


def best_rate(frame, messages: int) -> float:
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        frame.write.format("noop").mode("overwrite").save()
        seconds.append(time.perf_counter() - started)
    return messages / min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--poison-fraction", type=float, default=0.01)
    parser.add_argument("--quick", action="store_true", help="200,000 records")
    parser.add_argument("--no-record", action="store_true", help="print the row instead of adding it to BENCHMARKS.md")
    args = parser.parse_args()
    if args.quick:
        args.messages = 200_000
    spark = build_spark_session(app_name="bench_parse")
    rows = kafka_rows(spark, args.messages, args.poison_fraction)
    rows.count()
    reference = rows.select(F.from_json(F.col("value").cast("string"), DEVICE_MESSAGE_SCHEMA).alias("m")).select("m.*")
    parsed = parse_device_messages(rows)
    reference_rate, parse_rate = best_rate(reference, args.messages), best_rate(parsed, args.messages)
    reasons = {r[0]: r[1] for r in parsed.groupBy("reason").count().collect()}
    print(f"from_json {reference_rate:,.0f} ev/s; parse with rules {parse_rate:,.0f} ev/s "
          f"(ratio {parse_rate / reference_rate:.2f}); reasons {reasons}")
    record_run(SECTION, INTRO, HEADER,
               f"python -m bench.bench_parse --messages {args.messages} --poison-fraction {args.poison_fraction:g}",
               [f"{args.messages:,}", f"{reference_rate:,.0f}", f"{parse_rate:,.0f}", f"{parse_rate / reference_rate:.2f}"],
               args.no_record)


if __name__ == "__main__":
    main()
