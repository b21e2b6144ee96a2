from celery import shared_task


@shared_task(name="accounts.clean_login_attempts")
def clean_login_attempts() -> int:
    """Delete sign-in failures older than the cool-off; safe to run any number of times."""
    from .services.users import login_attempts_clean

    return login_attempts_clean()
