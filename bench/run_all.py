"""Every benchmark in sequence, each recording its row in BENCHMARKS.md (`make bench`).

    python -m bench.run_all [--quick] [--no-record]

Needs the stack running (`antenna stack up`) and the environment pointing at it. Each benchmark
also runs alone: python -m bench.bench_simulator | bench.bench_parse | bench.bench_batch | bench.bench_speed_layer.
They run one after the other in fresh interpreters: each owns a Spark session and the machine's cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHMARKS = ("bench.bench_simulator", "bench.bench_parse", "bench.bench_batch", "bench.bench_speed_layer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a check in minutes")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    flags = [flag for flag, on in (("--quick", args.quick), ("--no-record", args.no_record)) if on]
    failed = []
    for module in BENCHMARKS:
        print(f"== {module} {' '.join(flags)}", flush=True)
        if subprocess.run([sys.executable, "-m", module, *flags]).returncode != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
