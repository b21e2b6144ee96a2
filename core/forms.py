from django import forms

from .errors import ServiceError


def add_service_error(form: forms.BaseForm, exc: ServiceError) -> None:
    """Show a service's refusal on the field it concerns, or at the top of the form."""
    field = exc.param if exc.param in form.fields else None
    form.add_error(field, exc.message)
