#!/usr/bin/env python3
"""Scrapes an imds-snoop /metrics endpoint the way Prometheus would and prints what the real
Prometheus parsers (PyPI prometheus-client) read from it, as JSON for the Rust test:

    scrape_metrics.py http://127.0.0.1:PORT/metrics
    -> {"content_type": "...", "samples": [[name, {labels}, value], ...]}

The body is parsed twice: by the OpenMetrics parser (strict: it rejects a body that breaks
the format it is served as, e.g. a missing `# EOF`, a badly escaped label, unordered
buckets) and by the classic text parser `prometheus_client.parser` (what older scrapers
use). Both must read the same samples; any parse error or disagreement exits non-zero.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text


def samples(families):
    out = [(s.name, dict(s.labels), float(s.value)) for f in families for s in f.samples]
    return sorted(out, key=lambda s: (s[0], sorted(s[1].items())))


def main():
    url = sys.argv[1]
    # No proxy: the endpoint is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        content_type = resp.headers.get("Content-Type", "")
        body = resp.read().decode("utf-8")
    strict = samples(parse_openmetrics(body))
    classic = samples(parse_text(body))
    if strict != classic:
        sys.exit(f"the OpenMetrics and text parsers disagree:\n{strict}\n{classic}")
    json.dump(
        {
            "content_type": content_type,
            "samples": [[n, labels, v] for n, labels, v in strict],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
