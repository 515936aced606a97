"""Fail loudly, before the tests, when PostgreSQL or Redis cannot be reached.

The test database itself is created by pytest-django; the database named in the URL is
created here when the server answers but does not have it yet (a fresh machine).
"""

from __future__ import annotations

import sys

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def _postgres_problem(database_url: str) -> str | None:
    conninfo = database_url.replace("postgres://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo, connect_timeout=5):
            return None
    except psycopg.OperationalError as error:
        if "does not exist" not in str(error):
            return f"PostgreSQL is unreachable at {database_url}: {error}".strip()
    # The server answers but the database is missing: create it from the maintenance database.
    name = conninfo_to_dict(conninfo).get("dbname")
    try:
        with psycopg.connect(
            make_conninfo(conninfo, dbname="postgres"), connect_timeout=5, autocommit=True
        ) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
    except psycopg.Error as error:
        return f"PostgreSQL has no database {name!r} and it could not be created: {error}"
    return None


def main(database_url: str, broker_url: str) -> int:
    problems = []
    problem = _postgres_problem(database_url)
    if problem:
        problems.append(problem)
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
