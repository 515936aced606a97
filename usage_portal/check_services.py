"""Fail loudly, before the tests, when PostgreSQL or Redis cannot be reached."""

from __future__ import annotations

import sys

import psycopg
import redis


def main(database_url: str, broker_url: str) -> int:
    problems = []
    try:
        with psycopg.connect(
            database_url.replace("postgres://", "postgresql://"), connect_timeout=5
        ):
            pass
    except psycopg.Error as error:
        problems.append(f"PostgreSQL is unreachable at {database_url}: {error}".strip())
    try:
        redis.Redis.from_url(broker_url, socket_connect_timeout=5).ping()
    except redis.RedisError as error:
        problems.append(f"Redis is unreachable at {broker_url}: {error}")
    for problem in problems:
        print(f"make test: {problem}", file=sys.stderr)  # noqa: T201
    if problems:
        print(  # noqa: T201
            "make test: start both (see README, 'Operations'), or set TEST_DATABASE_URL and "
            "TEST_BROKER_URL. The suite does not skip tests that need them.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
