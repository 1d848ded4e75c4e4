"""Write constraints.txt from pip's resolution report (`make lock`).

    pip install --dry-run --ignore-installed --report REPORT '.[dev,bench,otel]'
    python docker/lock.py REPORT > constraints.txt

Every package of that resolution (the runtime dependencies, the extras, and all they pull in) is pinned
with ``==``, except the project itself. Local version labels are dropped (``torch==2.13.0``, not
``2.13.0+cpu``): the index or the wheel folder picks the build, the CPU wheel or PyPI's CUDA build of the
same version, and ``==2.13.0`` matches both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROJECT = "serve"
HEADER = """\
# Locked versions: every package that serve installs (the runtime dependencies, the dev, bench and otel
# extras, and everything they pull in), as one resolution on CPython {python}, {platform} (the image's platform).
# A constraints file: honoured by `make setup` (pip install -c constraints.txt -e '.[dev]'), `make bench`
# and the Docker image (docker/install-deps.sh); it pins what gets installed and installs nothing itself.
# Regenerate after changing a dependency in pyproject.toml, or to move to newer releases: make lock
# torch has no local label (+cpu): the index or docker/wheels/ picks the CPU build or PyPI's CUDA build of
# this version; the CUDA build pins its nvidia-* packages itself.
"""


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def main(report_path: str) -> None:
    report = json.loads(Path(report_path).read_text())
    environment = report.get("environment", {})
    pins = {}
    for item in report["install"]:
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        if name != PROJECT:
            pins[name] = version.split("+", 1)[0]
    platform = f"{environment.get('sys_platform', '?')} {environment.get('platform_machine', '?')}"
    sys.stdout.write(HEADER.format(python=environment.get("python_full_version", "?"), platform=platform))
    for name in sorted(pins):
        sys.stdout.write(f"{name}=={pins[name]}\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python docker/lock.py REPORT.json > constraints.txt")
    main(sys.argv[1])
