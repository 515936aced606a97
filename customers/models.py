"""Customers: who usage belongs to, named in usage payloads by their external ID."""

from __future__ import annotations

from django.db import models
from django.urls import reverse


class Customer(models.Model):
    # The external ID that appears in usage payloads, such as `cus_...`.
    external_id = models.CharField("ID", max_length=255)
    name = models.CharField(max_length=255, blank=True)
    email = models.EmailField(max_length=254, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "meters_customer"
        ordering = ["external_id"]
        constraints = [
            models.UniqueConstraint(fields=["external_id"], name="customer_unique_external_id"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})" if self.name else self.external_id

    def get_absolute_url(self) -> str:
        return reverse("customers:customer_detail", kwargs={"pk": self.pk})
