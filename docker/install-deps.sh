#!/bin/sh
# Builder-stage helper (see Dockerfile): create /opt/venv and install the project's *runtime*
# dependencies (REQUIREMENTS: [project].dependencies of pyproject.toml, never the dev extras) at the
# versions locked in CONSTRAINTS (constraints.txt, `make lock`), with the torch build picked by
# TORCH_VARIANT; the torch version is the one pinned there.
#
#   TORCH_VARIANT         cpu (default) | cuda
#   REQUIREMENTS          /tmp/build/requirements.txt
#   CONSTRAINTS           /tmp/build/constraints.txt (pip -c: every package installed is pinned there)
#   TORCH_INDEX_URL       cpu: extra index for the CPU wheel (default https://download.pytorch.org/whl/cpu;
#                         empty = none, e.g. with the wheel in docker/wheels/)
#   TORCH_CUDA_INDEX_URL  cuda: extra index such as https://download.pytorch.org/whl/cu128
#                         (empty = PyPI, whose Linux x86_64 torch wheel is the CUDA build)
#   WHEELS_DIR            local wheels (docker/wheels/ in the context); used with --find-links if it holds *.whl
#   OFFLINE               1 = no index at all (pip --no-index): every wheel from WHEELS_DIR (`make docker-wheels`)
#   CA_FILE               optional CA bundle (docker/host-ca.crt); exported as PIP_CERT when present
set -eu

: "${TORCH_VARIANT:=cpu}"
: "${REQUIREMENTS:=/tmp/build/requirements.txt}"
: "${WHEELS_DIR:=/tmp/wheels}"
: "${CA_FILE:=/tmp/build/host-ca.crt}"
: "${CONSTRAINTS:=/tmp/build/constraints.txt}"
: "${OFFLINE:=}"
TORCH_INDEX_URL="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
TORCH_CUDA_INDEX_URL="${TORCH_CUDA_INDEX_URL-}"

if [ -s "$CA_FILE" ]; then
    export PIP_CERT="$CA_FILE"
    echo "install-deps: pip uses the CA bundle $CA_FILE"
fi

python3 -m venv /opt/venv
PIP="/opt/venv/bin/python -m pip"

# Local wheels. For the CUDA variant the +cpu torch wheels are left out, since pip would prefer them
# (2.13.0+cpu sorts above 2.13.0).
LINKS=""
if ls "$WHEELS_DIR"/*.whl >/dev/null 2>&1; then
    mkdir -p /tmp/links
    for whl in "$WHEELS_DIR"/*.whl; do
        case "$TORCH_VARIANT:$(basename "$whl")" in
            cuda:torch-*+cpu*|cuda:torch-*%2Bcpu*) echo "install-deps: skipping $(basename "$whl") for the cuda variant" ;;
            *) ln -s "$whl" /tmp/links/ ;;
        esac
    done
    if [ -n "$(ls /tmp/links)" ]; then
        LINKS="--find-links /tmp/links"
        echo "install-deps: local wheels: $(ls /tmp/links | tr '\n' ' ')"
    fi
fi

case "$TORCH_VARIANT" in
    cpu)  INDEX="$TORCH_INDEX_URL" ;;
    cuda) INDEX="$TORCH_CUDA_INDEX_URL" ;;
    *) echo "install-deps: TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 2 ;;
esac
EXTRA=""          # torch's index, for the torch install only
[ -n "$INDEX" ] && EXTRA="--extra-index-url $INDEX"
NOINDEX=""
if [ "$OFFLINE" = 1 ]; then
    [ -n "$LINKS" ] || { echo "install-deps: OFFLINE=1 but no wheels in docker/wheels/ (run make docker-wheels)" >&2; exit 2; }
    EXTRA="" NOINDEX="--no-index"
    echo "install-deps: offline: every wheel from docker/wheels/, no index"
elif [ -n "$OFFLINE" ] && [ "$OFFLINE" != 0 ]; then
    echo "install-deps: OFFLINE must be 1, 0 or empty, not '$OFFLINE'" >&2; exit 2
fi
[ -s "$CONSTRAINTS" ] || { echo "install-deps: no lock at $CONSTRAINTS (constraints.txt; make lock writes it)" >&2; exit 2; }

echo "install-deps: runtime requirements:"; sed 's/^/    /' "$REQUIREMENTS"
TORCH_SPEC=$(grep -E '^torch([^a-zA-Z0-9_.-]|$)' "$REQUIREMENTS" | head -n 1)
[ -n "$TORCH_SPEC" ] || { echo "install-deps: no torch requirement in $REQUIREMENTS" >&2; exit 2; }

# torch first, on its own, so the variant decides the build; everything else then sees it installed.
# shellcheck disable=SC2086
$PIP install $LINKS $EXTRA $NOINDEX -c "$CONSTRAINTS" "$TORCH_SPEC"
# shellcheck disable=SC2086
$PIP install $LINKS $NOINDEX -c "$CONSTRAINTS" -r "$REQUIREMENTS"

# Fail the build if the wrong torch build slipped in.
/opt/venv/bin/python - "$TORCH_VARIANT" <<'PY'
import sys
import torch
variant, cuda = sys.argv[1], torch.version.cuda
print(f"install-deps: torch {torch.__version__}, CUDA {cuda}")
if (variant == "cpu") != (cuda is None):
    raise SystemExit(f"install-deps: the {variant} variant got torch {torch.__version__} (CUDA {cuda})")
PY
$PIP check

# The lock must cover what was installed: a package it does not name was resolved freely (a dependency added
# to pyproject.toml without `make lock`, or a CUDA build other than the locked one). Packages that an installed
# package pins exactly (as torch pins most nvidia-* ones) are counted apart; any other is reported, and a
# direct dependency missing from the lock fails the build.
/opt/venv/bin/python - "$CONSTRAINTS" "$REQUIREMENTS" <<'PY'
import re
import sys
from importlib import metadata

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def names(path):
    found = set()
    for line in open(path):
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if match:
            found.add(canonical(match.group(1)))
    return found

locked, direct = names(sys.argv[1]), names(sys.argv[2])
installed = {canonical(dist.metadata["Name"]) for dist in metadata.distributions()} - {"pip", "setuptools", "wheel"}
pinned_by_others = set()
for dist in metadata.distributions():
    for requirement in dist.requires or []:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^]]*\])?\s*\(?\s*===?\s*[^,;*]+(;|$)", requirement)
        if match:
            pinned_by_others.add(canonical(match.group(1)))
unlocked = sorted(installed - locked)
if direct & set(unlocked):
    raise SystemExit(f"install-deps: not in constraints.txt: {sorted(direct & set(unlocked))}; run make lock")
loose = [name for name in unlocked if name not in pinned_by_others]
if loose:
    print(f"install-deps: WARNING: installed without a pin in constraints.txt: {loose}")
pinned = len(unlocked) - len(loose)
print(f"install-deps: {len(installed & locked)} packages at their locked versions"
      + (f", {pinned} pinned exactly by the packages that need them" if pinned else ""))
PY
