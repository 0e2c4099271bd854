"""gunicorn settings read automatically from the repository root (`gunicorn app:server`, Procfile).

Workers, threads, timeout and bind come from the command line (Procfile); only hooks live here.
"""


def post_worker_init(worker):
    """Finish Dash's one-time setup before the worker takes requests. Dash runs it in the first request
    and marks it done before it finishes, so with threads (gthread) the requests that arrive meanwhile
    get an empty callback graph, a page that never works. One request through the test client, here,
    does the setup while nothing else can."""
    client = worker.wsgi.test_client()
    client.get("/healthz")
    deps = client.get("/_dash-dependencies")
    worker.log.info("dash setup done in worker %s (%s callbacks)", worker.pid, len(deps.get_json() or []))
