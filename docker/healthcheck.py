"""Container health check: exit 0 when GET /v2/health/ready answers 200 (every model loaded and warm).

Used by the image's HEALTHCHECK and docker-compose; follows SERVE_HOST/SERVE_PORT like the server.
"""

import os
import sys
import urllib.request

host = os.environ.get("SERVE_HOST", "127.0.0.1")
if host in ("", "0.0.0.0", "::"):
    host = "127.0.0.1"
if ":" in host:
    host = f"[{host}]"
port = os.environ.get("SERVE_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://{host}:{port}/v2/health/ready", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # 503 (not ready) raises HTTPError
    print(f"not ready: {exc}", file=sys.stderr)
    sys.exit(1)
