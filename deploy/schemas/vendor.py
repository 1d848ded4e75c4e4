"""Vendor a CustomResourceDefinition's schema for tests/test_deploy_manifests.py, which validates the custom
resources in deploy/ offline.

    python deploy/schemas/vendor.py SOURCE_URL RELEASE COMMIT [CRD.yaml]

(the CRD is read from SOURCE_URL, or from CRD.yaml, a copy of it)
writes deploy/schemas/<group>_<plural>.json: the openAPIV3Schema of each served version, with the
descriptions taken out (they are most of the file and no part of validation), and where it came from.
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: without_descriptions(value) for key, value in node.items() if key != "description"}
    if isinstance(node, list):
        return [without_descriptions(value) for value in node]
    return node


def main(source: str, release: str, commit: str, crd_path: str | None = None) -> Path:
    if crd_path is None:
        with urllib.request.urlopen(source, timeout=60) as response:
            text = response.read()
    else:
        text = Path(crd_path).read_bytes()
    [crd] = [doc for doc in yaml.safe_load_all(text) if doc]
    spec = crd["spec"]
    vendored = {
        "source": source,
        "release": release,
        "commit": commit,
        "source_sha256": hashlib.sha256(text).hexdigest(),
        "group": spec["group"],
        "kind": spec["names"]["kind"],
        "scope": spec["scope"],
        "versions": {version["name"]: without_descriptions(version["schema"]["openAPIV3Schema"])
                     for version in spec["versions"] if version.get("served", True)},
    }
    out = Path(__file__).resolve().parent / f"{spec['group']}_{spec['names']['plural']}.json"
    out.write_text(json.dumps(vendored, indent=0, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
