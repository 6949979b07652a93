"""The Megalos HTTP API: the reflector's view of the cluster, over HTTP/JSON.

    gunicorn -c api/gunicorn.conf.py          (serves create_app() with gthread workers)

`create_app(config)` builds the Flask app (api.app): with `config` None the settings come from
the environment (see api.settings), otherwise from the defaults and `config` alone (tests). One
blueprint per resource: vnis, macs, nodes, events; health (healthz, readyz, metrics); openapi.
The app reaches the reflector only through reflector.protocol's StateClient. `megalosctl`
(api.cli) is the command-line client, standard library only.
"""


def __getattr__(name: str):
    """`api.create_app` is api.app's, imported on first use (PEP 562): megalosctl lives in this
    package and starts in a fraction of the time without Flask."""
    if name == "create_app":
        from api.app import create_app
        return create_app
    raise AttributeError(f"module 'api' has no attribute {name!r}")
