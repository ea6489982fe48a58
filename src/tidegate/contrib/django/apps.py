from __future__ import annotations

from django.apps import AppConfig


class TidegateConfig(AppConfig):
    name = "tidegate.contrib.django"
    label = "tidegate"
    verbose_name = "tidegate"
