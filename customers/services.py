"""Writes for customers: create, update and the CSV import.

Each function is keyword-only, runs in one transaction, validates before writing and raises
``ValidationError`` (with a code) that forms show as they are; every change is audited.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction

from customers.models import Customer
from uploads.reading import FileProblem, Record, open_decompressed, records, text_lines
from usage_portal.audit import audit_diff, audit_record, audit_target
from usage_portal.models import AuditEntry

# --- Customers -------------------------------------------------------------------------------

# Stripe's metadata limits: 50 keys, keys up to 40 characters, values up to 500.
METADATA_MAX_KEYS = 50
METADATA_MAX_KEY_LENGTH = 40
METADATA_MAX_VALUE_LENGTH = 500


def customer_metadata_validate(metadata: Any) -> dict[str, Any]:
    """A flat JSON object of at most 50 keys; values are strings, numbers, booleans or null."""
    if not isinstance(metadata, dict):
        raise ValidationError(
            'Metadata must be a JSON object, such as {"plan": "pro"}.',
            code="metadata_not_object",
        )
    errors: list[ValidationError] = []
    if len(metadata) > METADATA_MAX_KEYS:
        errors.append(
            ValidationError(
                "Metadata can have at most %(max)d keys; it has %(count)d.",
                code="metadata_too_many_keys",
                params={"max": METADATA_MAX_KEYS, "count": len(metadata)},
            )
        )
    for key, value in metadata.items():
        if not key.strip():
            errors.append(ValidationError("Metadata keys can't be empty.", code="metadata_key"))
        elif len(key) > METADATA_MAX_KEY_LENGTH:
            errors.append(
                ValidationError(
                    "Metadata key “%(key)s” is longer than %(max)d characters.",
                    code="metadata_key_too_long",
                    params={"key": key[:50], "max": METADATA_MAX_KEY_LENGTH},
                )
            )
        if isinstance(value, dict | list):
            errors.append(
                ValidationError(
                    "Metadata value for “%(key)s” must be a string, number, true/false or "
                    "null, not a nested object or list.",
                    code="metadata_nested_value",
                    params={"key": key[:50]},
                )
            )
        elif isinstance(value, str) and len(value) > METADATA_MAX_VALUE_LENGTH:
            errors.append(
                ValidationError(
                    "Metadata value for “%(key)s” is longer than %(max)d characters.",
                    code="metadata_value_too_long",
                    params={"key": key[:50], "max": METADATA_MAX_VALUE_LENGTH},
                )
            )
    if errors:
        raise ValidationError(errors)
    return metadata


def customer_external_id_validate(external_id: str) -> str:
    if not external_id:
        raise ValidationError("Enter the customer ID.", code="required")
    if external_id != external_id.strip() or any(ch.isspace() for ch in external_id):
        raise ValidationError(
            "The customer ID can't contain spaces: it must match the ID in usage payloads exactly.",
            code="invalid_customer_id",
        )
    if len(external_id) > 255:
        raise ValidationError(
            "The customer ID can be at most 255 characters; it has %(length)d.",
            code="customer_id_too_long",
            params={"length": len(external_id)},
        )
    return external_id


def customer_id_taken_error(external_id: str) -> ValidationError:
    return ValidationError(
        "A customer with ID “%(external_id)s” already exists.",
        code="duplicate_customer_id",
        params={"external_id": external_id},
    )


@transaction.atomic
def customer_create(
    *,
    actor: User | None,
    external_id: str,
    name: str = "",
    email: str = "",
    metadata: dict[str, Any] | None = None,
) -> Customer:
    try:
        customer_external_id_validate(external_id)
    except ValidationError as error:
        raise ValidationError({"external_id": error}) from error
    customer = Customer(
        external_id=external_id,
        name=name.strip(),
        email=email.strip(),
        metadata=customer_metadata_validate(metadata or {}),
    )
    customer.full_clean(validate_constraints=False, validate_unique=False)
    if Customer.objects.filter(external_id=external_id).exists():
        raise ValidationError({"external_id": customer_id_taken_error(external_id)})
    try:
        with transaction.atomic():
            customer.save()
    except IntegrityError as error:
        raise ValidationError({"external_id": customer_id_taken_error(external_id)}) from error
    audit_record(
        target=customer,
        action=AuditEntry.Action.CREATE,
        actor=actor,
        changes={
            name: [None, getattr(customer, name)]
            for name in ("external_id", "name", "email", "metadata")
            if getattr(customer, name) or name == "external_id"
        },
    )
    return customer


@transaction.atomic
def customer_update(
    *,
    customer: Customer,
    actor: User | None,
    name: str | None = None,
    email: str | None = None,
    metadata: dict[str, Any] | None = None,
    external_id: str | None = None,
) -> Customer:
    """Change a customer's name, email or metadata. The ID is immutable: usage payloads and
    stored events refer to it."""
    locked = Customer.objects.select_for_update().get(pk=customer.pk)
    if external_id is not None and external_id != locked.external_id:
        raise ValidationError(
            {
                "external_id": ValidationError(
                    "The customer ID can't be changed after creation.", code="immutable_field"
                )
            }
        )
    new_values: dict[str, Any] = {}
    if name is not None:
        new_values["name"] = name.strip()
    if email is not None:
        new_values["email"] = email.strip()
    if metadata is not None:
        new_values["metadata"] = customer_metadata_validate(metadata)
    changes = audit_diff(locked, new_values)
    if not changes:
        return locked
    for attr, (_old, new) in changes.items():
        setattr(locked, attr, new)
    locked.full_clean(validate_constraints=False, validate_unique=False)
    locked.save(update_fields=list(changes))
    audit_record(target=locked, action=AuditEntry.Action.UPDATE, actor=actor, changes=changes)
    return locked


# --- Customer CSV import ---------------------------------------------------------------------

CUSTOMER_IMPORT_MAX_ROWS = 10_000
CUSTOMER_IMPORT_MAX_BYTES = 5 * 1024 * 1024
CUSTOMER_IMPORT_COLUMNS = ("id", "name", "email")
CUSTOMER_IMPORT_MAX_LINE_BYTES = 64 * 1024
_COLUMN_COUNT = "\0columns"  # set on rows whose number of values differs from the header's
_ROW_ERROR = "\0error"  # set on rows the reader refused (not valid CSV, line too long)


@dataclass(frozen=True)
class ImportRowError:
    line: int  # line in the file, the header being line 1
    external_id: str
    message: str


@dataclass
class CustomerImportResult:
    rows_imported: int = 0
    rows_total: int = 0
    errors: list[ImportRowError] = field(default_factory=list)
    # A problem with the whole file (encoding, header, size): nothing was imported.
    file_error: str = ""

    @property
    def rows_rejected(self) -> int:
        return len(self.errors)


@transaction.atomic
def customers_import_csv(*, actor: User | None, data: bytes) -> CustomerImportResult:
    """Import customers from CSV with the header ``id,name,email`` (``id`` required, the
    others optional, any order). Valid rows are created; invalid rows, and rows whose ID
    already exists (never overwritten), are reported with their line numbers.

    A problem with the whole file (too large, not UTF-8, bad header, too many rows) imports
    nothing and is returned as ``file_error``. Each created customer gets its own audit
    entry (action "import") so its page shows where it came from.
    """
    result = CustomerImportResult()
    try:
        rows = _parse_customer_csv(data)
    except ValidationError as error:
        result.file_error = " ".join(error.messages)
        return result

    result.rows_total = len(rows)
    seen: dict[str, int] = {}
    candidates: list[tuple[int, Customer]] = []
    for line, row in rows:
        external_id = row.get("id", "")
        try:
            if _ROW_ERROR in row:
                raise ValidationError(row[_ROW_ERROR])
            if _COLUMN_COUNT in row:
                count, expected = row[_COLUMN_COUNT].split("/")
                raise ValidationError(
                    "The line has %(count)s; the header has %(expected)s columns.",
                    params={
                        "count": f"{count} value" if count == "1" else f"{count} values",
                        "expected": expected,
                    },
                )
            customer_external_id_validate(external_id)
            if external_id in seen:
                raise ValidationError(
                    "Duplicate of line %(line)d in this file.",
                    params={"line": seen[external_id]},
                )
            seen[external_id] = line
            email = row.get("email", "").strip()
            if email:
                validate_email(email)
            name = row.get("name", "").strip()
            if len(name) > 255:
                raise ValidationError("Name is longer than 255 characters.")
        except ValidationError as error:
            message = " ".join(error.messages)
            if error.code == "invalid":  # validate_email's generic message names no field
                message = f"Invalid email address “{row.get('email', '').strip()}”."
            result.errors.append(ImportRowError(line, external_id, message))
            continue
        candidates.append((line, Customer(external_id=external_id, name=name, email=email)))

    existing = set(
        Customer.objects.filter(
            external_id__in=[customer.external_id for _, customer in candidates]
        ).values_list("external_id", flat=True)
    )
    to_create = []
    for line, customer in candidates:
        if customer.external_id in existing:
            result.errors.append(
                ImportRowError(
                    line,
                    customer.external_id,
                    "A customer with this ID already exists; not changed.",
                )
            )
        else:
            to_create.append(customer)
    result.errors.sort(key=lambda error: error.line)

    try:
        with transaction.atomic():
            created = Customer.objects.bulk_create(to_create, batch_size=1000)
    except IntegrityError:
        result.file_error = (
            "Another change created some of these customers at the same time; nothing was "
            "imported. Try the import again."
        )
        result.errors = []
        return result
    AuditEntry.objects.bulk_create(
        [
            AuditEntry(
                target_type=audit_target(customer)[0],
                target_id=str(customer.pk),
                action=AuditEntry.Action.IMPORT,
                actor=actor,
                changes={
                    name: [None, getattr(customer, name)]
                    for name in ("external_id", "name", "email")
                    if getattr(customer, name) or name == "external_id"
                },
            )
            for customer in created
        ],
        batch_size=1000,
    )
    result.rows_imported = len(created)
    return result


def _parse_customer_csv(data: bytes) -> list[tuple[int, dict[str, str]]]:
    """(line, {column: value}) of each row, read by the uploads reader: the same decoding,
    gzip, binary and size checks and messages as a usage upload, not a second CSV parser."""
    if len(data) > CUSTOMER_IMPORT_MAX_BYTES:
        raise ValidationError(
            "The file is %(size)s MB; the limit is 5 MB.",
            code="file_too_large",
            params={"size": f"{len(data) / 1024 / 1024:.1f}"},
        )
    try:
        lines = text_lines(
            open_decompressed(io.BytesIO(data)),
            max_bytes=CUSTOMER_IMPORT_MAX_BYTES,
            max_line_bytes=CUSTOMER_IMPORT_MAX_LINE_BYTES,
        )
        rows = list(records(lines, max_line_bytes=CUSTOMER_IMPORT_MAX_LINE_BYTES))
    except FileProblem as problem:
        raise ValidationError(problem.reason, code="invalid_file") from None
    if not rows:
        raise ValidationError("The file is empty.", code="empty_file")
    header_record, *data_records = rows
    if header_record.error is not None:
        raise ValidationError(
            "The header line: %(reason)s",
            code="invalid_csv",
            params={"reason": header_record.error.message},
        )
    header = _customer_header(header_record.fields)
    if len(data_records) > CUSTOMER_IMPORT_MAX_ROWS:
        raise ValidationError(
            "The file has more than %(max)s rows; split it into files of at most %(max)s rows.",
            code="too_many_rows",
            params={"max": f"{CUSTOMER_IMPORT_MAX_ROWS:,}"},
        )
    return [(record.line, _customer_row(header, record)) for record in data_records]


def _customer_header(fields: list[str]) -> list[str]:
    header = [column.strip().lower() for column in fields]
    unknown = [column for column in header if column not in CUSTOMER_IMPORT_COLUMNS]
    duplicated = {column for column in header if header.count(column) > 1}
    if "id" in header and not unknown and not duplicated:
        return header
    problems = []
    if "id" not in header:
        problems.append("it has no “id” column")
    if unknown:
        problems.append("unknown columns: " + ", ".join(f"“{c}”" for c in unknown))
    if duplicated:
        problems.append("repeated columns: " + ", ".join(sorted(duplicated)))
    raise ValidationError(
        "The first line must be the header id,name,email (name and email optional); "
        + "; ".join(problems)
        + ".",
        code="invalid_header",
    )


def _customer_row(header: list[str], record: Record) -> dict[str, str]:
    if record.error is not None:  # malformed CSV or an over-long line: this row only
        return {_ROW_ERROR: record.error.message}
    row = dict(zip(header, record.fields, strict=False))
    if len(record.fields) != len(header):
        row[_COLUMN_COUNT] = f"{len(record.fields)}/{len(header)}"
    return row
