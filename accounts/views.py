"""Keys over the API (CONTRACT section 10): thin views over accounts.services and selectors."""

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from maschina.errors import ApiError
from maschina.schema import errors

from . import selectors, services
from .serializers import KeyCreatedSerializer, KeyCreateSerializer, KeySerializer


def _unrestricted(request) -> None:
    """Only a key with neither a model list nor a token limit may create or revoke keys: a key
    given to a CI job must not mint itself a wider one."""
    if request.auth is not None and request.auth.is_restricted:
        raise ApiError(
            "forbidden",
            "This API key is restricted (models or monthly_token_limit) and may not manage keys.",
            status.HTTP_403_FORBIDDEN,
        )


class KeyListCreateApi(GenericAPIView):
    serializer_class = KeySerializer

    @extend_schema(operation_id="keys_list", responses=KeySerializer(many=True))
    def get(self, request):
        page = self.paginate_queryset(selectors.key_list(user=request.user))
        return self.get_paginated_response(KeySerializer(page, many=True).data)

    @extend_schema(
        operation_id="keys_create",
        request=KeyCreateSerializer,
        responses={201: KeyCreatedSerializer, **errors(403)},
    )
    def post(self, request):
        _unrestricted(request)
        serializer = KeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        body = serializer.validated_data
        key, raw = services.api_key_create(
            user=request.user,
            name=body["name"],
            allowed_models=body["models"],
            monthly_token_limit=body["monthly_token_limit"],
            expires_at=body["expires_at"],
        )
        key.key = raw  # type: ignore[attr-defined]  # rendered once, in this answer
        return Response(KeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)


class KeyDetailApi(GenericAPIView):
    serializer_class = KeySerializer

    @extend_schema(operation_id="keys_retrieve")
    def get(self, request, key_id):
        return Response(KeySerializer(selectors.key_get(user=request.user, key_id=key_id)).data)

    @extend_schema(operation_id="keys_destroy", responses={204: None, **errors(403)})
    def delete(self, request, key_id):
        _unrestricted(request)
        services.api_key_revoke(key=selectors.key_get(user=request.user, key_id=key_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
