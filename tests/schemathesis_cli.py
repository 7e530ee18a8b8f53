"""The schemathesis CLI, with one workaround: on CPython 3.11.7 (this machine's), ast.parse can fail
with "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905, fixed in 3.11.8)
when hypothesis parses a large source file only to print a lambda in a description. The run itself is
unaffected, so such a description falls back to hypothesis's own "<unknown>" form. And one addition: a
deserializer for the CSV that GET /usage/history answers to `Accept: text/csv`."""

import sys

from hypothesis.internal import lambda_sources

_describe = lambda_sources._lambda_description


def _describe_or_unknown(f, *args, **kwargs):
    try:
        return _describe(f, *args, **kwargs)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources._lambda_description = _describe_or_unknown

if __name__ == "__main__":
    import schemathesis
    from schemathesis.cli import schemathesis as cli

    @schemathesis.deserializer("text/csv")
    def deserialize_csv(ctx, response):
        """GET /usage/history's CSV is documented as a string: its text is what the schema validates."""
        return response.content.decode()

    sys.exit(cli())
