"""Write constraints.txt from pip's resolution reports (`make lock`).

    pip install --dry-run --ignore-installed --report REPORT '.[dev,bench,otel]'
    python docker/lock.py REPORT > constraints.txt
    pip install --isolated --dry-run --ignore-installed --report CUDA_REPORT --index-url <PyPI> \
        -c constraints.txt torch==<the locked version>
    python docker/lock.py REPORT CUDA_REPORT > constraints.txt

Every package of the first resolution (the runtime dependencies, the extras, and all they pull in) is pinned
with ``==``, except the project itself. Local version labels are dropped (``torch==2.13.0``, not
``2.13.0+cpu``): the index or the wheel folder picks the build, the CPU wheel or PyPI's CUDA build of the
same version, and ``==2.13.0`` matches both. The second, optional report is PyPI's CUDA build of that torch
resolved under the first lock: its own packages (nvidia-*, triton, cuda-*) are added, so that the CUDA image
is locked too; pip installs a constrained package only where something requires it, so they cost the CPU
variant and `make setup` nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PROJECT = "serve"
HEADER = """\
# Locked versions: every package that serve installs (the runtime dependencies, the dev, bench and otel
# extras, and everything they pull in), as one resolution on CPython {python}, {platform} (the image's
# platform), and the packages of PyPI's CUDA build of the same torch (the CUDA image's), marked below.
# A constraints file: honoured by `make setup` (pip install -c constraints.txt -e '.[dev]'), `make bench`
# and the Docker image (docker/install-deps.sh); it pins what gets installed and installs nothing itself.
# Regenerate after changing a dependency in pyproject.toml, or to move to newer releases: make lock
# torch has no local label (+cpu): the index or docker/wheels/ picks the CPU build or PyPI's CUDA build.
"""


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def resolved(report: dict[str, Any]) -> dict[str, str]:
    pins = {}
    for item in report["install"]:
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        if name != PROJECT:
            pins[name] = version.split("+", 1)[0]
    return pins


def main(report_path: str, cuda_report_path: str | None) -> None:
    report = json.loads(Path(report_path).read_text())
    pins = resolved(report)
    cuda = resolved(json.loads(Path(cuda_report_path).read_text())) if cuda_report_path else {}
    clashes = {name: (pins[name], version) for name, version in cuda.items() if pins.get(name, version) != version}
    if clashes:
        raise SystemExit(f"lock: the CUDA build's resolution disagrees with the lock: {clashes}")
    environment = report.get("environment", {})
    platform = f"{environment.get('sys_platform', '?')} {environment.get('platform_machine', '?')}"
    sys.stdout.write(HEADER.format(python=environment.get("python_full_version", "?"), platform=platform))
    for name in sorted(pins):
        sys.stdout.write(f"{name}=={pins[name]}\n")
    extra = sorted(set(cuda) - set(pins))
    if extra:
        torch = cuda.get("torch", "?")
        sys.stdout.write(f"# PyPI's CUDA build of torch=={torch} (TORCH_VARIANT=cuda) installs these as well:\n")
        for name in extra:
            sys.stdout.write(f"{name}=={cuda[name]}\n")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python docker/lock.py REPORT.json [CUDA_REPORT.json] > constraints.txt")
    main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
