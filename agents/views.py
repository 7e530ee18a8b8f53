"""Thin views: parse, call a service or selector, serialize. The gate's order of checks
(CONTRACT section 5) is: auth -> agent -> body -> input risk -> model -> quota."""

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from . import selectors, services
from .serializers import AgentSerializer, AgentWriteSerializer


def _valid(serializer_class, data, **context):
    serializer = serializer_class(data=data, context=context)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class AgentListCreateApi(GenericAPIView):
    serializer_class = AgentSerializer

    @extend_schema(operation_id="agents_list", responses=AgentSerializer(many=True))
    def get(self, request):
        page = self.paginate_queryset(selectors.agent_list(owner=request.user))
        return self.get_paginated_response(AgentSerializer(page, many=True).data)

    @extend_schema(
        operation_id="agents_create", request=AgentWriteSerializer, responses={201: AgentSerializer}
    )
    def post(self, request):
        agent = services.agent_create(owner=request.user, **_valid(AgentWriteSerializer, request.data))
        return Response(AgentSerializer(agent).data, status=status.HTTP_201_CREATED)


class AgentDetailApi(GenericAPIView):
    serializer_class = AgentSerializer

    @extend_schema(operation_id="agents_retrieve")
    def get(self, request, agent_id):
        return Response(AgentSerializer(selectors.agent_get(owner=request.user, agent_id=agent_id)).data)

    @extend_schema(
        operation_id="agents_update", request=AgentWriteSerializer(partial=True), responses=AgentSerializer
    )
    def patch(self, request, agent_id):
        agent = selectors.agent_get(owner=request.user, agent_id=agent_id)
        serializer = AgentWriteSerializer(agent, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        agent = services.agent_update(agent=agent, **serializer.validated_data)
        return Response(AgentSerializer(agent).data)

    @extend_schema(operation_id="agents_destroy", responses={204: None})
    def delete(self, request, agent_id):
        services.agent_delete(agent=selectors.agent_get(owner=request.user, agent_id=agent_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
