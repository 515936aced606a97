from __future__ import annotations

import factory
from django.contrib.auth.models import Group, User

from customers.models import Customer
from events.models import EventBatch
from meters.models import Meter
from uploads.models import Upload
from usage_portal.roles import Role


def _user_role_add(user: User, create: bool, extracted: Role | None, **kwargs: object) -> None:
    if create and extracted:
        # get_or_create: transactional tests flush the groups the data migration made.
        user.groups.add(Group.objects.get_or_create(name=extracted.value)[0])


# Typed by the model they make: call them as ``MeterFactory.create()``, which mypy reads as
# a Meter (a bare ``MeterFactory()`` does the same but reads as the factory).
class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    first_name = factory.Faker("first_name")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.django.Password("portal-test-password")
    role = factory.PostGeneration(_user_role_add)


class MeterFactory(factory.django.DjangoModelFactory[Meter]):
    class Meta:
        model = Meter

    display_name = factory.Sequence(lambda n: f"API calls {n}")
    event_name = factory.Sequence(lambda n: f"api_calls_{n}")
    aggregation_formula = Meter.Formula.SUM


class CustomerFactory(factory.django.DjangoModelFactory[Customer]):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"cus_{n:06d}")
    name = factory.Faker("company")
    email = factory.Sequence(lambda n: f"billing{n}@example.com")


class UploadFactory(factory.django.DjangoModelFactory[Upload]):
    """A queued upload with no stored file (nothing for a worker to read)."""

    class Meta:
        model = Upload

    original_name = "usage.csv"
    size_bytes = 0
    uploaded_by = factory.SubFactory(UserFactory)
    batch = factory.LazyAttribute(
        lambda upload: EventBatch.objects.create(source="csv", user=upload.uploaded_by)
    )
