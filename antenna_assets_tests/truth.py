"""Comparing the serving tables with the simulator's ground truth."""

from __future__ import annotations

from datetime import datetime

import psycopg2

from antenna_assets.serving.schema import AggregateTable
from antenna_assets.sources.simulator import GroundTruth


def read_table(url: str, table: AggregateTable) -> dict[tuple[str, datetime], int]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {table.key}, date, {table.value} FROM {table.name}")
            return {(key, date): int(value) for key, date, value in cur.fetchall()}
    finally:
        conn.close()


def expected(truth: GroundTruth, per: str, hourly: bool = False) -> dict[tuple[str, datetime], int]:
    """Ground-truth sums per (key, window start) for `per` in antenna, user, app."""
    windows = truth.hours if hourly else truth.windows
    return {(key, start): total
            for start, totals in windows.items()
            for key, total in getattr(totals, per).items()}


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def execute(url: str, sql: str, params: tuple = ()) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
    finally:
        conn.close()
