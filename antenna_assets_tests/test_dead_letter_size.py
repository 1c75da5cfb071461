"""Dead letters of any size: bounded on the driver and in PostgreSQL's statements, each kept whole (inline
or in the lake), provable by its length and SHA-256, never added twice (README: Data, dead letters)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from antenna_assets.serving.schema import BYTES_AGG_USER
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, SpeedLayerTargets, run_until_stopped
from antenna_assets_tests.truth import query, read_table

NO_LATE_DROPS = "3650 days"  # the events below are stamped in 2025
WINDOW = datetime(2025, 4, 1, 10)
# Case 3 of issue 28: ~540 MB of records that are not UTF-8, under the local broker's 10 MB limit.
BURST_RECORDS = 600
BURST_RECORD_BYTES = 900_000


def _garbage(seed: int, size: int) -> bytes:
    """`size` bytes that are not UTF-8 (a lone 0xff), different for each seed."""
    return b"\xff" + random.Random(seed).randbytes(size - 1)


def _valid(user: str, nbytes: int) -> bytes:
    return json.dumps({"timestamp": int(WINDOW.timestamp()) + 7, "id": user, "antenna_id": "a", "bytes": nbytes,
                       "app": "SKYPE"}).encode()


def _produce(settings, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """(key, value) records, in order, into partition 0: large ones need a producer limit above librdkafka's 1 MB."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "message.max.bytes": 10_000_000,
                         "linger.ms": 20})
    for key, value in records:
        producer.produce(topic, value, key=key, partition=0)
        producer.poll(0)
    assert producer.flush(60) == 0


def _targets(settings, topic: str, url: str, folder: Path) -> SpeedLayerTargets:
    return SpeedLayerTargets(settings.kafka_bootstrap, topic, str(folder / "landing"),
                             str(folder / "checkpoints" / topic), url)


def _dead_letters(url: str) -> dict[int, tuple]:
    """kafka_offset -> (raw_length, raw_sha256, raw_value, raw_key, raw_location, reason)."""
    rows = query(url, "SELECT kafka_offset, raw_length, raw_sha256, raw_value, raw_key, raw_location, reason "
                      "FROM dead_letter")
    return {offset: (length, sha, None if value is None else bytes(value), None if key is None else bytes(key),
                     location, reason)
            for offset, length, sha, value, key, location, reason in rows}


def _lake_records(location: str) -> Iterator[tuple[int, bytes | None, bytes | None]]:
    """(kafka_offset, raw_value, raw_key) of the records kept in a dead letter's raw_location (a local
    folder here), a few at a time."""
    for path in sorted(Path(location).glob("*.parquet")):
        for rows in pq.ParquetFile(path).iter_batches(batch_size=16, columns=["kafka_offset", "raw_value", "raw_key"]):
            yield from zip(*(rows.column(name).to_pylist() for name in rows.column_names))


@pytest.mark.slow
def test_a_burst_of_large_garbage_is_dead_lettered_whole_at_the_default_heap(settings, spark, topic, serving_db,
                                                                             tmp_path):
    before = [(None, _valid(f"before-{n % 3}", 10 + n)) for n in range(50)]
    after = [(None, _valid(f"after-{n % 3}", 1000 + n)) for n in range(50)]
    _produce(settings, topic, before)
    for first in range(0, BURST_RECORDS, 100):  # in pieces: the producer's queue holds ~1 GB by default
        _produce(settings, topic, [(None, _garbage(n, BURST_RECORD_BYTES)) for n in range(first, first + 100)])
    _produce(settings, topic, after)

    config = SpeedLayerConfig(trigger="available_now", watermark=NO_LATE_DROPS, query_name=topic)
    layer = SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path))
    run_until_stopped(layer)  # the session's driver heap is the default (ANTENNA_SPARK_DRIVER_MEMORY unset)

    assert (layer.stats.good_messages, layer.stats.bad_messages) == (100, BURST_RECORDS)
    expected = {}
    for _, value in before + after:
        message = json.loads(value)
        expected[(message["id"], WINDOW)] = expected.get((message["id"], WINDOW), 0) + message["bytes"]
    assert read_table(serving_db, BYTES_AGG_USER) == expected
    dead = _dead_letters(serving_db)
    first_offset = len(before)
    assert sorted(dead) == list(range(first_offset, first_offset + BURST_RECORDS))
    # Too large to be inline: each one's bytes are in the lake, where its row says.
    locations = {location for _, _, value, _, location, _ in dead.values()}
    assert all(value is None for _, _, value, _, _, _ in dead.values()) and None not in locations
    kept = []
    for offset, value, key in (record for location in locations for record in _lake_records(location)):
        sent = _garbage(offset - first_offset, BURST_RECORD_BYTES)  # what was produced at this offset
        length, sha, _, _, _, reason = dead[offset]
        assert (length, sha, reason) == (len(sent), hashlib.sha256(sent).hexdigest(), "not_utf8")
        assert (value, key) == (sent, None)
        kept.append(offset)
    assert sorted(kept) == sorted(dead)
    assert spark.read.parquet(str(tmp_path / "landing")).count() == 100


INLINE_BYTES, PAGE_BYTES = 1_000, 4_000  # small, so one batch has records of both kinds and several pages


class _FailsOnceAfterItsDeadLetters(SpeedLayer):
    """The first time, fails inside the batch's transaction once every page of dead letters is inserted;
    records the size of each page it passes on."""

    page_sizes: list[int]

    def _micro_batch_result(self, *args, **kwargs):
        result = super()._micro_batch_result(*args, **kwargs)
        layer = self

        class Pages:
            def __iter__(self):
                for page in result.dead_letters:
                    layer.page_sizes.append(sum(2 * len(value.adapted) for row in page for value in (row[3], row[4])
                                                if value is not None))  # raw_value, raw_key as psycopg2.Binary
                    yield page
                if not getattr(layer, "failed", False):
                    layer.failed = True
                    raise RuntimeError("a crash after the dead letters, before the commit")

        return replace(result, dead_letters=Pages())


def test_large_dead_letters_go_to_the_lake_small_ones_inline_and_a_replay_adds_nothing_twice(
        settings, spark, topic, serving_db, tmp_path):
    records = [(None, _valid("u", 5))]
    records += [(f"k{n}".encode() if n % 2 else None, _garbage(n, 40 * n + 30)) for n in range(1, 21)]  # inline
    records += [(None, _garbage(100 + n, INLINE_BYTES + 1 + 3_000 * n)) for n in range(4)]  # to the lake
    records += [(b"K" * 600, _garbage(200, 500)),  # key and value together above the limit: to the lake
                (b"tombstone", None),  # no value at all: inline, no length, no digest
                (None, _valid("u", 7))]
    _produce(settings, topic, records)
    config = SpeedLayerConfig(trigger="available_now", watermark=NO_LATE_DROPS, query_name=topic, batch_attempts=2,
                              dead_letter_inline_bytes=INLINE_BYTES, dead_letter_page_bytes=PAGE_BYTES)
    layer = _FailsOnceAfterItsDeadLetters(spark, config, _targets(settings, topic, serving_db, tmp_path))
    layer.page_sizes = []
    run_until_stopped(layer)

    assert layer.failed and (layer.stats.good_messages, layer.stats.bad_messages) == (2, len(records) - 2)
    assert read_table(serving_db, BYTES_AGG_USER) == {("u", WINDOW): 12}
    # The rows reached PostgreSQL in several statements, none much above the page (one row more at most).
    assert len(layer.page_sizes) > 2 and max(layer.page_sizes) <= PAGE_BYTES + 2 * INLINE_BYTES
    dead = _dead_letters(serving_db)
    assert sorted(dead) == list(range(1, len(records) - 1))
    [location] = {row[4] for row in dead.values() if row[4] is not None}
    [(checkpoint_id,)] = query(serving_db, "SELECT checkpoint_id FROM streaming_batches WHERE query = %s", (topic,))
    assert location == str(tmp_path / "dead_letter" / f"batch={checkpoint_id}-0")
    in_lake = {offset: (value, key) for offset, value, key in _lake_records(location)}
    for offset, (key, value) in enumerate(records):
        if offset not in dead:
            continue
        length, sha, raw_value, raw_key, raw_location, _ = dead[offset]
        expected_digest = None if value is None else hashlib.sha256(value).hexdigest()
        assert (length, sha) == (None if value is None else len(value), expected_digest)
        if len(key or b"") + len(value or b"") > INLINE_BYTES:
            assert (raw_value, raw_key, raw_location) == (None, None, location)
            assert in_lake[offset] == (value, key)
        else:
            assert (raw_value, raw_key, raw_location) == (value, key, None)
    # Written twice (the failed attempt and its replay), kept once: the replay overwrote its own folder.
    assert sorted(in_lake) == sorted(o for o, row in dead.items() if row[4] is not None)
    assert spark.read.parquet(location).count() == len(in_lake) == 5
    previews = [preview for preview, in query(serving_db, "SELECT preview FROM dead_letter")]
    # Every garbage record, inline or not, shows its first bytes; the tombstone has none.
    assert sum(1 for p in previews if p is not None and p.startswith("\\xff")) == len(records) - 3

    # The same records read again under a new checkpoint: the ledger's marks keep them out.
    shutil.rmtree(tmp_path / "checkpoints")
    again = SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path))
    run_until_stopped(again)
    assert (again.stats.good_messages, again.stats.bad_messages) == (0, 0)
    assert _dead_letters(serving_db) == dead
    assert [p.name for p in (tmp_path / "dead_letter").iterdir()] == [Path(location).name]
