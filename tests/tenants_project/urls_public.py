"""The public site (the public tenant's domain): the admin, credentials included."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
