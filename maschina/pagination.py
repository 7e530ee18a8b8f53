from rest_framework import pagination

from .errors import ApiError
from .query_params import MAX_ASCII_INT, ascii_int


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """?limit= (1-100, default 20) and ?offset=; out-of-range values are a 400, not silently clamped."""

    default_limit = 20
    max_limit = 100

    def get_limit(self, request):
        return self._bounded_int(request, self.limit_query_param, 1, self.max_limit, self.default_limit)

    def get_offset(self, request):
        return self._bounded_int(request, self.offset_query_param, 0, None, 0)

    @staticmethod
    def _bounded_int(request, name, low, high, default):
        raw = request.query_params.get(name)
        if raw is None:
            return default
        value = ascii_int(raw)
        if value is None or value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ApiError(
                "invalid", "The request has invalid fields.", fields={name: [f"Must be an integer {bounds}."]}
            )
        return value

    def get_schema_operation_parameters(self, view):
        """limit and offset with their bounds, so generated requests know what is valid."""
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit, "default": self.default_limit},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_ASCII_INT, "default": 0},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters
