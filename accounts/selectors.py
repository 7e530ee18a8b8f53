from django.http import Http404

from .models import ApiKey


def key_list(*, user):
    return ApiKey.objects.filter(user=user).order_by("-created_at", "-id")


def key_get(*, user, key_id) -> ApiKey:
    """One of the user's keys; another user's is as missing as one that never was (404)."""
    key = ApiKey.objects.filter(user=user, pk=key_id).first()
    if key is None:
        raise Http404
    return key
