"""The Megalos HTTP API: the reflector's view of the cluster, over HTTP/JSON.

    gunicorn -c api/gunicorn.conf.py          (serves create_app() with gthread workers)

`create_app(config)` builds the Flask app (api.app): with `config` None the settings come from
the environment (see api.settings), otherwise from the defaults and `config` alone (tests). One
blueprint per resource: vnis, macs, nodes, events; health (healthz, readyz, metrics); openapi.
The app reaches the reflector only through reflector.protocol's StateClient. `megalosctl`
(api.cli) is the command-line client, standard library only.
"""


def create_app(config: dict | None = None):
    # Flask is imported here, not when the package is: megalosctl lives in this package and
    # starts in a fraction of the time without it.
    from api.app import build_app
    return build_app(config)
