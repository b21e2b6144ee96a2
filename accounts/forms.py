from collections.abc import Callable
from typing import Any, cast

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.http import QueryDict
from django_countries import countries
from django_countries.fields import LazyTypedChoiceField

from core.emails import queue_email
from core.errors import ServiceError

from .models import ApiKey, Organization, User
from .permissions import Permission, Role, can
from .services import organizations, registration
from .validators import validate_org_slug


def _country_field() -> forms.Field:
    return LazyTypedChoiceField(choices=[("", "Choose a country"), *countries], label="Country")


class SignupForm(forms.Form):
    full_name = forms.CharField(max_length=150, label="Your name")
    email = forms.EmailField(
        label="Work e-mail", widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
        strip=False,
    )
    organization_name = forms.CharField(max_length=100, label="Organization name")
    organization_slug = forms.CharField(
        max_length=40,
        label="Organization address",
        help_text="Lower-case letters, digits and hyphens; used in your console's URLs.",
        validators=[validate_org_slug],
    )
    country = _country_field()
    billing_email = forms.EmailField(
        required=False,
        label="Billing e-mail",
        help_text="Where invoices and receipts go. Leave empty to use your own address.",
    )

    # The service checks all of this again inside its transaction; checking here as well lets
    # the form show every problem at once instead of one per submission. Whether the e-mail
    # address already has an account is not a problem the form may show (the service mails
    # that account's owner instead).
    def clean_email(self) -> str:
        return registration.normalize_email(self.cleaned_data["email"])

    def clean_organization_slug(self) -> str:
        slug = self.cleaned_data["organization_slug"].strip().lower()
        _service_check(organizations.validate_new_slug, slug)
        return slug

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("password"):
            candidate = User(email=data.get("email") or "", full_name=data.get("full_name") or "")
            try:
                registration.validate_new_password(data["password"], candidate)
            except ServiceError as exc:
                self.add_error("password", exc.message)
        return data


def _service_check(check: Callable[[str], object], value: str) -> str:
    try:
        check(value)
    except ServiceError as exc:
        raise forms.ValidationError(exc.message, code=exc.code) from exc
    return value


class InvitationSignupForm(forms.Form):
    full_name = forms.CharField(max_length=150, label="Your name")
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
        strip=False,
    )


class LoginForm(AuthenticationForm):
    username = forms.EmailField(
        label="E-mail", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"})
    )
    error_messages = {
        "invalid_login": "That e-mail and password do not match an account.",
        "inactive": "This account is disabled. Contact support.",
    }


class QueuedPasswordResetForm(PasswordResetForm):
    """Password reset whose e-mail goes through the e-mail queue like every other message."""

    def send_mail(
        self,
        subject_template_name: str,
        email_template_name: str,
        context: dict,
        from_email: str | None,
        to_email: str,
        html_email_template_name: str | None = None,
    ) -> None:
        queue_email(to=to_email, template="password_reset", context=context)


class ProfileForm(forms.Form):
    full_name = forms.CharField(max_length=150, required=False, label="Name")


class OrganizationCreateForm(forms.Form):
    name = forms.CharField(max_length=100, label="Organization name")
    slug = forms.CharField(
        max_length=40, label="Organization address", validators=[validate_org_slug]
    )
    country = _country_field()
    billing_email = forms.EmailField(label="Billing e-mail")

    def clean_slug(self) -> str:
        return self.cleaned_data["slug"].strip().lower()


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name", "legal_name", "country", "billing_email", "tax_id", "address"]
        widgets = {"address": forms.Textarea(attrs={"rows": 3})}


def role_choices_for(actor_role: str) -> list[tuple[str, str]]:
    """Roles an actor may hand out: only owners may make owners."""
    return [
        (value, label)
        for value, label in Role.choices
        if value != Role.OWNER or can(actor_role, Permission.GRANT_OWNER)
    ]


class InviteForm(forms.Form):
    email = forms.EmailField(label="E-mail")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)

    def __init__(self, data: QueryDict | None = None, *, actor_role: str) -> None:
        super().__init__(data)
        cast(forms.ChoiceField, self.fields["role"]).choices = role_choices_for(actor_role)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="Where it is used, e.g. “CI runner”.")
    kind = forms.ChoiceField(
        choices=[
            (ApiKey.Kind.PERSONAL, "Personal: acts for you, ends when you leave"),
            (ApiKey.Kind.SERVICE, "Service: belongs to the organization (owners only)"),
        ],
        initial=ApiKey.Kind.PERSONAL,
        required=False,
        widget=forms.RadioSelect,
        help_text="A service key survives people leaving and ends only when revoked.",
    )
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[ApiKey.Scope.RESERVATIONS_READ],
    )
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Leave empty for a key that does not expire.",
    )
