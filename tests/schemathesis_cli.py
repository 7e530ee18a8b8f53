"""The schemathesis CLI, with one workaround: on CPython 3.11.7 (this machine's), ast.parse can fail
with "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905, fixed in 3.11.8)
when hypothesis parses a large source file only to print a lambda in a description. The run itself is
unaffected, so such a description falls back to hypothesis's own "<unknown>" form."""

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
    from schemathesis.cli import schemathesis

    sys.exit(schemathesis())
