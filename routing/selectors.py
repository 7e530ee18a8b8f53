from django.core.exceptions import ObjectDoesNotExist

DEFAULT_TIER = "access"  # the tier of a user no one put on one (e.g. a superuser)


def tier_slug_of(user) -> str:
    """The slug of the user's tier. The plan is billing's, but its tier is all routing needs, read
    through the one-to-one accessor (loaded with the key lookup) without importing billing."""
    try:
        return user.plan.tier_id
    except ObjectDoesNotExist:
        return DEFAULT_TIER
