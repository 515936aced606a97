from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from customers.forms import CustomerCreateForm, CustomerEditForm
from customers.models import Customer
from customers.services import customer_create, customer_update
from tests.factories import CustomerFactory
from usage_portal.models import AuditEntry

pytestmark = pytest.mark.django_db


def test_create_with_metadata_is_audited(admin_role_user: User) -> None:
    customer = customer_create(
        actor=admin_role_user,
        external_id="cus_ABC",
        name="Acme",
        email="billing@acme.test",
        metadata={"plan": "pro", "seats": 5},
    )
    assert customer.metadata == {"plan": "pro", "seats": 5}
    entry = AuditEntry.objects.get(target_type="customers.customer")
    assert entry.target_id == str(customer.pk) and entry.actor == admin_role_user
    assert entry.changes["external_id"] == [None, "cus_ABC"]
    assert entry.changes["metadata"] == [None, {"plan": "pro", "seats": 5}]


def test_duplicate_id_is_a_specific_error(admin_role_user: User) -> None:
    CustomerFactory.create(external_id="cus_1")
    with pytest.raises(ValidationError) as caught:
        customer_create(actor=admin_role_user, external_id="cus_1")
    assert caught.value.error_dict["external_id"][0].code == "duplicate_customer_id"
    assert "cus_1" in caught.value.messages[0]


@pytest.mark.parametrize("external_id", ["", " cus_1", "cus 1", "x" * 256])
def test_invalid_ids_are_refused(admin_role_user: User, external_id: str) -> None:
    with pytest.raises(ValidationError) as caught:
        customer_create(actor=admin_role_user, external_id=external_id)
    assert "external_id" in caught.value.error_dict
    assert not Customer.objects.exists()


def test_id_of_255_characters_is_fine(admin_role_user: User) -> None:
    assert customer_create(actor=admin_role_user, external_id="c" * 255).pk


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        (["a"], "metadata_not_object"),
        ({"nested": {"a": 1}}, "metadata_nested_value"),
        ({"k" * 41: "v"}, "metadata_key_too_long"),
        ({"k": "v" * 501}, "metadata_value_too_long"),
        ({f"k{i}": i for i in range(51)}, "metadata_too_many_keys"),
    ],
)
def test_metadata_follows_stripe_limits(admin_role_user: User, metadata: object, code: str) -> None:
    with pytest.raises(ValidationError) as caught:
        customer_create(actor=admin_role_user, external_id="cus_m", metadata=metadata)  # type: ignore[arg-type]
    assert code in [error.code for error in caught.value.error_list]


def test_update_records_only_what_changed(admin_role_user: User) -> None:
    customer = CustomerFactory.create(name="Acme", email="a@acme.test", metadata={"plan": "free"})
    customer_update(
        customer=customer,
        actor=admin_role_user,
        name="Acme",
        email="billing@acme.test",
        metadata={"plan": "pro"},
    )
    entry = AuditEntry.objects.get(action=AuditEntry.Action.UPDATE)
    assert entry.changes == {
        "email": ["a@acme.test", "billing@acme.test"],
        "metadata": [{"plan": "free"}, {"plan": "pro"}],
    }


def test_external_id_is_immutable(admin_role_user: User) -> None:
    customer = CustomerFactory.create(external_id="cus_keep")
    with pytest.raises(ValidationError) as caught:
        customer_update(customer=customer, actor=admin_role_user, external_id="cus_new", name="x")
    assert caught.value.error_dict["external_id"][0].code == "immutable_field"
    customer.refresh_from_db()
    assert customer.external_id == "cus_keep" and customer.name != "x"


def test_update_rejects_an_invalid_email(admin_role_user: User) -> None:
    customer = CustomerFactory.create()
    with pytest.raises(ValidationError) as caught:
        customer_update(customer=customer, actor=admin_role_user, email="not-an-email")
    assert "email" in caught.value.error_dict


def test_metadata_form_field_explains_bad_json() -> None:
    form = CustomerEditForm(data={"name": "A", "email": "", "metadata": '{"plan": "pro",}'})
    assert not form.is_valid()
    assert "Metadata is not valid JSON" in form.errors["metadata"][0]
    assert "line 1" in form.errors["metadata"][0]


def test_metadata_form_field_accepts_an_object_and_blank() -> None:
    form = CustomerCreateForm(data={"external_id": "cus_1", "metadata": '{"a": "b"}'})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["metadata"] == {"a": "b"}
    blank = CustomerCreateForm(data={"external_id": "cus_1", "metadata": "  "})
    assert blank.is_valid() and blank.cleaned_data["metadata"] == {}


def test_metadata_form_field_rejects_nested_values() -> None:
    form = CustomerEditForm(data={"metadata": '{"a": [1, 2]}'})
    assert not form.is_valid()
    assert "nested" in form.errors["metadata"][0]
