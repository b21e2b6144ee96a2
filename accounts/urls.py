from django.contrib.auth import views as auth_views
from django.urls import path

from . import team_views, views

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("signup/slug/", views.signup_slug, name="signup-slug"),
    path("signup/sent/", views.signup_sent, name="signup-sent"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("verify/resend/", views.verify_email_resend, name="verify-email-resend"),
    path("verify/<str:token>/", views.verify_email, name="verify-email"),
    path("password/reset/", views.PasswordResetView.as_view(), name="password-reset"),
    path("password/reset/sent/", views.PasswordResetDoneView.as_view(), name="password-reset-done"),
    path(
        "password/reset/<uidb64>/<token>/",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("account/", views.profile, name="profile"),
    path("account/confirm-password/", views.confirm_password, name="confirm-password"),
    path("o/<slug:slug>/api-keys/", views.api_keys_page, name="api-keys"),
    path(
        "o/<slug:slug>/api-keys/<str:public_id>/<str:action>/",
        views.api_key_action,
        name="api-key-action",
    ),
    path("invitations/<str:token>/", team_views.invitation, name="invitation"),
    path("organizations/new/", views.organization_create, name="organization-create"),
    path("o/<slug:slug>/settings/", views.organization_settings, name="organization-settings"),
    path("o/<slug:slug>/team/", team_views.team, name="team"),
    path("o/<slug:slug>/team/invite/", team_views.team_invite, name="team-invite"),
    path(
        "o/<slug:slug>/team/invitations/<int:invitation_id>/revoke/",
        team_views.invitation_revoke,
        name="invitation-revoke",
    ),
    path(
        "o/<slug:slug>/team/<int:membership_id>/role/", team_views.member_role, name="member-role"
    ),
    path(
        "o/<slug:slug>/team/<int:membership_id>/remove/",
        team_views.member_remove,
        name="member-remove",
    ),
]
