"""Talking to an S3 (or S3-compatible) store for a connector: list, download, write back,
and every failure said in words a person acts on (``StoreProblem``).

boto3 does the talking. Its own retries are cut to one more attempt, with short timeouts
(``USAGE_S3_TIMEOUT_SECONDS``), so an unreachable store is reported within seconds; the
connector's tasks retry later instead. Before each use the endpoint is checked against
``usage_portal.outbound``, so a connector cannot reach the machine's own services.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from django.conf import settings

from uploads.models import S3Connector
from usage_portal.crypto import SecretUnreadable, secret_decrypt
from usage_portal.outbound import outbound_url_problem

_READ_BYTES = 1024 * 1024

# What went wrong, by kind: the connector's page, its test and its files say it in words.
CREDENTIALS = "credentials"  # polling stops until the credentials change
UNREACHABLE = "unreachable"  # retried later
NO_BUCKET = "no_bucket"
ACCESS_DENIED = "access_denied"
WRONG_REGION = "wrong_region"
REPLACED = "replaced"  # the object changed (or went) after it was listed
REFUSED = "refused"  # the endpoint is an internal address
OTHER = "other"


class StoreProblem(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class ListedObject:
    key: str
    etag: str
    size_bytes: int
    last_modified: datetime | None


def _client(connector: S3Connector) -> Any:
    if connector.endpoint_url and (problem := outbound_url_problem(connector.endpoint_url)):
        raise StoreProblem(REFUSED, problem)
    secret = ""
    if connector.secret_encrypted:
        try:
            secret = secret_decrypt(connector.secret_encrypted)
        except SecretUnreadable as error:
            raise StoreProblem(CREDENTIALS, str(error)) from None
    session = boto3.session.Session(
        aws_access_key_id=connector.access_key_id or None,
        aws_secret_access_key=(secret or None) if connector.access_key_id else None,
        region_name=connector.region or "us-east-1",
    )
    timeout = settings.USAGE_S3_TIMEOUT_SECONDS
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"} if connector.endpoint_url else {},
        user_agent_extra="UsagePortal-S3Import/1.0",
    )
    return session.client("s3", endpoint_url=connector.endpoint_url or None, config=config)


def problem_of(error: Exception, connector: S3Connector, *, key: str = "") -> StoreProblem:
    """The store's failure in plain words, with what to do."""
    if isinstance(error, StoreProblem):
        return error
    if isinstance(error, NoCredentialsError):
        return StoreProblem(
            CREDENTIALS,
            "No credentials: enter an access key ID and secret, or give the machine the "
            "workers run on an instance role that may read the bucket.",
        )
    if isinstance(error, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        endpoint = connector.endpoint_url or "Amazon S3"
        return StoreProblem(
            UNREACHABLE,
            f"The store at {endpoint} cannot be reached ({type(error).__name__}). Check the "
            f"endpoint URL and that the store is running; the portal tries again later.",
        )
    if isinstance(error, ResponseStreamingError):
        return StoreProblem(
            UNREACHABLE,
            "The connection broke while the file was downloading; it is downloaded again.",
        )
    if isinstance(error, ClientError):
        return _refusal(error, connector, key=key)
    if isinstance(error, BotoCoreError | OSError):
        return StoreProblem(
            UNREACHABLE, f"The store cannot be reached: {error}. The portal tries again later."
        )
    return StoreProblem(OTHER, f"Unexpected error talking to the store: {error}.")


def _refusal(error: ClientError, connector: S3Connector, *, key: str) -> StoreProblem:
    """What the store's error reply means (``problem_of``)."""
    where = f"bucket “{connector.bucket}”"
    body = error.response.get("Error", {})
    code = str(body.get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    if code in ("InvalidAccessKeyId", "InvalidClientTokenId", "ExpiredToken", "InvalidToken"):
        return StoreProblem(
            CREDENTIALS,
            f"The store does not accept the access key ID “{connector.access_key_id}” "
            f"({code}). Check it, or enter a new key and secret.",
        )
    if code == "SignatureDoesNotMatch":
        return StoreProblem(
            CREDENTIALS,
            f"The secret access key is wrong for access key ID “{connector.access_key_id}”. "
            f"Enter the secret again.",
        )
    if code == "NoSuchBucket":
        return StoreProblem(
            NO_BUCKET,
            f"There is no {where} at this store. Check the bucket's name (and the endpoint, "
            f"for an S3-compatible store).",
        )
    region = headers.get("x-amz-bucket-region") or body.get("Region", "")
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed") or status == 301:
        actual = f" The bucket is in {region}." if region else ""
        return StoreProblem(
            WRONG_REGION,
            f"Wrong region: the {where} is not in {connector.region}.{actual} Set the "
            f"connector's region to the bucket's.",
        )
    if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
        what = f"read “{key}”" if key else f"list {where} under “{connector.prefix or '/'}”"
        return StoreProblem(
            ACCESS_DENIED,
            f"Access denied: these credentials may not {what}. Allow s3:ListBucket and "
            f"s3:GetObject on the prefix, and s3:PutObject under its errors/ folder for the "
            f"error files.",
        )
    if code in ("PreconditionFailed", "NoSuchKey") or status == 412:
        return StoreProblem(
            REPLACED,
            "The object was replaced or deleted after it was listed, so this version cannot "
            "be downloaded. A new version is imported as a new file when it is listed.",
        )
    if isinstance(status, int) and status >= 500:
        return StoreProblem(
            UNREACHABLE,
            f"The store failed ({status} {code}); the portal tries again later.",
        )
    message = body.get("Message") or str(error)
    return StoreProblem(OTHER, f"The store refused the request: {code or status}: {message}")


def objects_listed(connector: S3Connector, *, limit: int | None = None) -> Iterator[ListedObject]:
    """The objects under the connector's prefix, every page (the first ``limit`` if given)."""
    try:
        client = _client(connector)
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=connector.bucket,
            Prefix=connector.prefix,
            PaginationConfig={"MaxItems": limit} if limit else {},
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield ListedObject(
                    key=item["Key"],
                    etag=str(item.get("ETag", "")).strip('"'),
                    size_bytes=int(item.get("Size", 0)),
                    last_modified=item.get("LastModified"),
                )
    except (BotoCoreError, ClientError, OSError) as error:
        raise problem_of(error, connector) from None


class _Body:
    """An object's body read in blocks, refused once over ``max_bytes``, with store
    failures said as ``StoreProblem``s."""

    def __init__(self, stream: Any, connector: S3Connector, key: str, max_bytes: int) -> None:
        self._stream = stream
        self._connector = connector
        self._key = key
        self._max_bytes = max_bytes
        self.read_bytes = 0

    def read(self, size: int = _READ_BYTES) -> bytes:
        try:
            block: bytes = self._stream.read(size if size and size > 0 else _READ_BYTES)
        except (BotoCoreError, ClientError, OSError) as error:
            raise problem_of(error, self._connector, key=self._key) from None
        self.read_bytes += len(block)
        if self.read_bytes > self._max_bytes:
            raise StoreProblem(OTHER, "The object grew past the size limit while downloading.")
        return block


def object_body(
    connector: S3Connector, *, key: str, etag: str, max_bytes: int
) -> tuple[_Body, int]:
    """The body of exactly the listed version (``If-Match`` its ETag), and its length."""
    try:
        reply = _client(connector).get_object(Bucket=connector.bucket, Key=key, IfMatch=etag)
    except (BotoCoreError, ClientError, OSError) as error:
        raise problem_of(error, connector, key=key) from None
    return _Body(reply["Body"], connector, key, max_bytes), int(reply.get("ContentLength", 0))


def object_put(connector: S3Connector, *, key: str, body: IO[bytes]) -> None:
    try:
        _client(connector).put_object(
            Bucket=connector.bucket, Key=key, Body=body, ContentType="text/csv; charset=utf-8"
        )
    except (BotoCoreError, ClientError, OSError) as error:
        raise problem_of(error, connector, key=key) from None
