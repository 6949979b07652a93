"""A Prometheus scrape as tests read it: every series, parsed by prometheus_client's own parser
(so a body it could not read fails the test), keyed as it is written with labels sorted:

    series(text)['megalos_api_requests_total{code="2xx",endpoint="/healthz"}'] == 3.0
"""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def series_name(name: str, labels: dict | None = None) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def series(text: str) -> dict[str, float]:
    return {series_name(sample.name, sample.labels): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}
