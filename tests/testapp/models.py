"""A project-owned tenant model, used by the swapped-tenant-model tests."""

from django.db import models


class Organization(models.Model):
    code = models.CharField(max_length=50, unique=True)
    title = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.title
