"""attnvis web app: `python app.py` (127.0.0.1:8050; HOST/PORT from the environment) or
`gunicorn app:server`. Importing this module loads no model: models load lazily, once per process."""
from __future__ import annotations

import os

import dash

from visapp import pages, templates  # noqa: F401  (templates: registers the plotly templates)
from visapp.hardening import on_callback_error, secret_key  # callback failures -> one line in the page
from visapp.layout import serve_layout

# Dash pages with the registry filled by visapp.pages (pages_folder="": no folder scan, which would
# import the page modules a second time under another name). The shell's own router
# (visapp.callbacks.route) swaps pages on a path change only: Dash's router also rebuilds the page on
# every query change, and a head click changes the query.
app = dash.Dash(__name__, title="attnvis", update_title=None, suppress_callback_exceptions=True,
                use_pages=True, pages_folder="",
                assets_folder=os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets"),
                health_endpoint="/healthz", on_error=on_callback_error)
app.layout = serve_layout
server = app.server
server.secret_key = secret_key()  # one signing secret for every web process (visapp.hardening)
pages.register_all()              # the page modules and their callbacks

from visapp import callbacks  # noqa: E402,F401  (registers the shell's callbacks on import)
# The Procfile's worker runs `celery -A app:celery_app`: importing this module registers the background
# callbacks as Celery tasks (with REDIS_URL) next to compute.tasks' corpus task.
from compute.tasks import celery_app  # noqa: E402,F401
from visapp import security  # noqa: E402

security.install(server, app.csp_hashes)  # security headers on every response, request-body limit
DEBUG = os.environ.get("ATTNVIS_DEBUG") == "1"

# Dash builds its callback list on the first request and marks itself ready before it has finished, so
# a request arriving meanwhile (a second browser request, another gunicorn thread) gets an empty
# /_dash-dependencies and that page never runs a callback. Do the setup now, single-threaded.
# (Not under ATTNVIS_DEBUG: app.run(debug=True) then adds error handlers, which Flask refuses after a request.)
if not DEBUG:
    with server.test_client() as _client:
        _client.get("/healthz")


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8050"))
    app.run(host=host, port=port, debug=DEBUG)


if __name__ == "__main__":
    main()
