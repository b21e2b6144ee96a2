"""The values a GPU model or region field accepts, named in the message that refuses another.

The messages are lazy: the catalog is read when a refusal is shown, so a model or region added
or retired since the form was defined is named as it is now."""

from django.utils.functional import lazy

from .models import GpuModel, Region


def gpu_model_slugs() -> list[str]:
    """The slugs a search or reservation accepts (active GPU models), in alphabetical order."""
    return sorted(GpuModel.objects.filter(is_active=True).values_list("slug", flat=True))


def region_codes() -> list[str]:
    """The region codes a search or reservation accepts (active regions), alphabetically."""
    return sorted(Region.objects.filter(is_active=True).values_list("code", flat=True))


def _unknown(noun: str, values: list[str]) -> str:
    # `%(value)` is filled in by the field that refuses it; at most 40 characters are echoed.
    choices = ", ".join(values) if values else "none is on offer right now"
    return f"Unknown {noun} '%(value).40s'; choose one of: {choices}."


def _unknown_gpu_model() -> str:
    return _unknown("GPU model", gpu_model_slugs())


def _unknown_region() -> str:
    return _unknown("region", region_codes())


UNKNOWN_GPU_MODEL = lazy(_unknown_gpu_model, str)()
UNKNOWN_REGION = lazy(_unknown_region, str)()
