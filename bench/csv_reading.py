"""Benchmark the reading of an upload's file, without a database: bytes to lines to records
(``uploads.reading``), for the validation pass (``inspect``) and the import pass
(``records`` + ``chunked``). Prints CPU seconds (steadier than wall time on a busy
machine) and rows/s for each.

    .venv/bin/python bench/csv_reading.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _content(rows: int) -> bytes:
    """A file like ``bench/csv_import.py``'s: 2,000 customers, 5 meters, 30 days."""
    random.seed(7)
    names = ["bench_api_calls", "bench_tokens", "bench_storage_gb", "bench_logins"]
    start = 1_700_000_000
    lines = ["timestamp,event_name,payload_stripe_customer_id,payload_value,payload_tokens\n"]
    for n in range(rows):
        name = names[n % 4]
        lines.append(
            f"{start + random.randrange(30 * 86400)},{name},cus_bench_{n % 2000:05d},"
            f"{random.randrange(1, 1000)},{random.randrange(1, 50)}\n"
        )
    return "".join(lines).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    from uploads import reading

    content = _content(args.rows)
    limit = 10 * len(content)
    for label in ("validation pass (inspect)", "import pass (records, chunks)"):
        best = float("inf")
        for _ in range(5):
            began = time.process_time()
            lines = reading.text_lines(io.BytesIO(content), max_bytes=limit, max_line_bytes=1 << 20)
            if label.startswith("validation"):
                inspection = reading.inspect(lines, max_line_bytes=1 << 20)
                assert inspection.records == args.rows
            else:
                record_iter = reading.records(lines, max_line_bytes=1 << 20)
                reading.header_read(record_iter)
                counted = sum(len(chunk) for chunk in reading.chunked(record_iter, 20_000))
                assert counted == args.rows
            best = min(best, time.process_time() - began)
        print(f"{label}: {best:.2f} s, {args.rows / best:,.0f} rows/s (CPU time, best of 5)")


if __name__ == "__main__":
    main()
