"""GET /: a small page for a person who opens the service in a browser, pointing to the docs and the
admin (the API itself lives under /api/v1/)."""

from django.http import HttpResponse

from .errors import method_not_allowed

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Maschina</title>
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;line-height:1.5}
code{background:#f3f3f3;padding:0 .25rem}</style></head>
<body>
<h1>Maschina</h1>
<p>The run API is at <code>/api/v1/</code>; every call needs
<code>Authorization: Bearer &lt;api key&gt;</code>
(<code>python manage.py create_api_key USERNAME</code>).</p>
<ul>
<li><a href="/api/docs/">API documentation</a> (Swagger UI) and the
<a href="/api/schema/">OpenAPI schema</a></li>
<li><a href="/admin/">Admin</a>: tiers, the model catalog, plans, usage dashboards</li>
<li><a href="/healthz">Health</a> of the database and the broker</li>
</ul>
</body>
</html>
"""


def home(request):
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(request, "GET", "HEAD")
    return HttpResponse(PAGE)
