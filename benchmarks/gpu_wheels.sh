#!/usr/bin/env bash
# The wheels a lent GPU machine lacks (it has torch, lightning, torchvision, torchmetrics and tensorboard, and no
# network): jsonargparse with its signatures extras, all pure Python (~1.1 MB). Run here, where the package
# registries are reachable, then carry the folder with the device call (carry: [".whl"]); gpu_session.sh installs
# from it when jsonargparse is missing.
#
#   bash benchmarks/gpu_wheels.sh      # fills .whl/ (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(python -c "import jsonargparse; print(jsonargparse.__version__)" 2>/dev/null || echo 4.53.0)
python -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps -d .whl \
    "jsonargparse[signatures]==$version" docstring-parser typeshed-client importlib_resources typing-extensions
ls -la .whl
