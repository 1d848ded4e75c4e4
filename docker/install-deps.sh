#!/bin/sh
# Builder-stage helper (see Dockerfile): create /opt/venv and install the project's *runtime*
# dependencies (REQUIREMENTS: [project].dependencies of pyproject.toml, never the dev extras), with
# the torch build picked by TORCH_VARIANT; the torch version is the one pinned there.
#
#   TORCH_VARIANT         cpu (default) | cuda
#   REQUIREMENTS          /tmp/build/requirements.txt
#   TORCH_INDEX_URL       cpu: extra index for the CPU wheel (default https://download.pytorch.org/whl/cpu;
#                         empty = none, e.g. offline with a wheel in docker/wheels/)
#   TORCH_CUDA_INDEX_URL  cuda: extra index such as https://download.pytorch.org/whl/cu128
#                         (empty = PyPI, whose Linux x86_64 torch wheel is the CUDA build)
#   WHEELS_DIR            local wheels (docker/wheels/ in the context); used with --find-links if it holds *.whl
#   CA_FILE               optional CA bundle (docker/host-ca.crt); exported as PIP_CERT when present
set -eu

: "${TORCH_VARIANT:=cpu}"
: "${REQUIREMENTS:=/tmp/build/requirements.txt}"
: "${WHEELS_DIR:=/tmp/wheels}"
: "${CA_FILE:=/tmp/build/host-ca.crt}"
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
EXTRA=""
[ -n "$INDEX" ] && EXTRA="--extra-index-url $INDEX"

echo "install-deps: runtime requirements:"; sed 's/^/    /' "$REQUIREMENTS"
TORCH_SPEC=$(grep -E '^torch([^a-zA-Z0-9_.-]|$)' "$REQUIREMENTS" | head -n 1)
[ -n "$TORCH_SPEC" ] || { echo "install-deps: no torch requirement in $REQUIREMENTS" >&2; exit 2; }

# torch first, on its own, so the variant decides the build; everything else then sees it installed.
# shellcheck disable=SC2086
$PIP install $LINKS $EXTRA "$TORCH_SPEC"
# shellcheck disable=SC2086
$PIP install $LINKS -r "$REQUIREMENTS"

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
