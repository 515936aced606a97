from __future__ import annotations

import gzip

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from customers.models import Customer
from customers.services import customers_import_csv
from tests.factories import CustomerFactory
from usage_portal.models import AuditEntry

pytestmark = pytest.mark.django_db


def _import(user: User, text: str | bytes):
    data = text.encode() if isinstance(text, str) else text
    return customers_import_csv(actor=user, data=data)


def test_valid_rows_are_imported_and_errors_listed_by_line(admin_role_user: User) -> None:
    CustomerFactory(external_id="cus_exists", name="Original")
    result = _import(
        admin_role_user,
        "id,name,email\n"
        "cus_1,Acme,billing@acme.test\n"  # line 2: ok
        "cus_exists,Changed,\n"  # line 3: exists, not overwritten
        ",No id,\n"  # line 4: missing id
        "cus_2,Bad mail,not-an-email\n"  # line 5: bad email
        "cus_1,Again,\n"  # line 6: duplicate of line 2
        "cus_3\n"  # line 7: too few columns
        "\n"  # line 8: blank, skipped
        'cus_4,"Multi\nline name",\n'  # lines 9-10: ok
        "cus_5,Last,last@x.test\n",  # line 11: ok
    )
    assert result.file_error == ""
    assert result.rows_imported == 3
    assert result.rows_total == 8  # the blank line is not a row
    errors = {error.line: error for error in result.errors}
    assert sorted(errors) == [3, 4, 5, 6, 7]
    assert "already exists" in errors[3].message
    assert "Enter the customer ID" in errors[4].message
    assert "not-an-email" in errors[5].message
    assert "line 2" in errors[6].message
    assert "has 1 value;" in errors[7].message and "3 columns" in errors[7].message
    assert set(Customer.objects.values_list("external_id", flat=True)) == {
        "cus_exists",
        "cus_1",
        "cus_4",
        "cus_5",
    }
    assert Customer.objects.get(external_id="cus_exists").name == "Original"
    assert Customer.objects.get(external_id="cus_4").name == "Multi\nline name"


def test_each_imported_customer_gets_an_import_audit_entry(admin_role_user: User) -> None:
    _import(admin_role_user, "id,name\ncus_a,A\ncus_b,B\n")
    entries = AuditEntry.objects.filter(action=AuditEntry.Action.IMPORT)
    assert entries.count() == 2
    customer = Customer.objects.get(external_id="cus_a")
    entry = entries.get(target_id=str(customer.pk))
    assert entry.actor == admin_role_user
    assert entry.changes == {"external_id": [None, "cus_a"], "name": [None, "A"]}


def test_header_in_any_order_case_and_bom(admin_role_user: User) -> None:
    result = _import(admin_role_user, "\ufeffEmail, ID ,Name\r\nx@y.test,cus_9,Nine\r\n")
    assert result.rows_imported == 1, result
    customer = Customer.objects.get()
    assert (customer.external_id, customer.name, customer.email) == ("cus_9", "Nine", "x@y.test")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"name,email\nA,a@b.test\n", "no “id” column"),
        (b"id,name,phone\ncus_1,A,1\n", "unknown columns: “phone”"),
        (b"id,id\ncus_1,cus_1\n", "repeated columns: id"),
        (b"", "empty"),
        (b"id,name\ncus_1,Caf\xe9\n", "not UTF-8"),
    ],
)
def test_file_errors_import_nothing(admin_role_user: User, content: bytes, expected: str) -> None:
    result = _import(admin_role_user, content)
    assert expected in result.file_error
    assert result.rows_imported == 0
    assert not Customer.objects.exists()


def test_more_than_10000_rows_is_refused(admin_role_user: User) -> None:
    rows = "".join(f"cus_{i}\n" for i in range(10_001))
    result = _import(admin_role_user, "id\n" + rows)
    assert "more than 10,000 rows" in result.file_error
    assert not Customer.objects.exists()


def test_exactly_10000_rows_are_imported(admin_role_user: User) -> None:
    rows = "".join(f"cus_{i},Name {i},c{i}@example.test\n" for i in range(10_000))
    result = _import(admin_role_user, "id,name,email\n" + rows)
    assert result.rows_imported == 10_000 and not result.errors
    assert Customer.objects.count() == 10_000
    assert AuditEntry.objects.filter(action="import").count() == 10_000


def test_import_page_shows_the_result(admin_client_role: Client) -> None:
    CustomerFactory(external_id="cus_old")
    upload = SimpleUploadedFile(
        "customers.csv", b"id,name,email\ncus_new,New,\ncus_old,Old,\n", "text/csv"
    )
    response = admin_client_role.post(reverse("customers:customer_import"), {"file": upload})
    assert response.status_code == 200
    html = response.content.decode()
    assert "1 of 2 customers imported." in html
    assert 'id="import-result"' in html
    assert "A customer with this ID already exists; not changed." in html


def test_import_page_shows_a_file_error_on_the_field(admin_client_role: Client) -> None:
    upload = SimpleUploadedFile("c.csv", b"phone\n123\n", "text/csv")
    response = admin_client_role.post(reverse("customers:customer_import"), {"file": upload})
    html = response.content.decode()
    assert 'class="errorlist"' in html and "no “id” column" in html
    assert 'id="import-result"' not in html


def test_support_cannot_import(support_client: Client) -> None:
    upload = SimpleUploadedFile("c.csv", b"id\ncus_1\n", "text/csv")
    response = support_client.post(reverse("customers:customer_import"), {"file": upload})
    assert response.status_code == 403
    assert not Customer.objects.exists()


def test_the_uploads_reader_reads_customer_files_too(admin_role_user: User) -> None:
    """Customer files are read like usage uploads: gzip is unpacked, and a line that is too
    long fails alone, with its line number, while the others import."""
    text = f"id,name\ncus_1,One\ncus_3,{'x' * (70 * 1024)}\ncus_4,Four\n"
    result = _import(admin_role_user, gzip.compress(text.encode()))
    assert result.file_error == ""
    assert (result.rows_total, result.rows_imported) == (3, 2)
    assert [(error.line, "longer than 64 KB" in error.message) for error in result.errors] == [
        (3, True)
    ]
    assert set(Customer.objects.values_list("external_id", flat=True)) == {"cus_1", "cus_4"}


def test_a_binary_file_is_refused_with_the_uploads_message(admin_role_user: User) -> None:
    result = _import(admin_role_user, b"id,name\ncus_1,\x00\x01\x02\n")
    assert "line 2 contains binary data" in result.file_error and result.rows_imported == 0
    assert not Customer.objects.exists()
