import factory
from django.utils import timezone

from accounts.models import Membership, Organization, User
from accounts.permissions import Role

PASSWORD = "correct-horse-battery-9"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    full_name = factory.Faker("name")
    email_verified_at = factory.LazyFunction(timezone.now)

    @classmethod
    def _create(cls, model_class: type[User], *args: object, **kwargs: object) -> User:
        password = kwargs.pop("password", PASSWORD)
        user = model_class(*args, **kwargs)
        user.set_password(password)
        user.save()
        return user


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    country = "DE"
    billing_email = factory.Sequence(lambda n: f"billing{n}@example.com")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organization = factory.SubFactory(OrganizationFactory)
    role = Role.MEMBER
