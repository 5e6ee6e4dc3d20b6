#!/usr/bin/env bash
# Regenerates both lock files from pyproject.toml; the only way they are written.
#   pip install uv && bash requirements/lock.sh
# pinned.txt: what pyproject.toml and Composer/Streaming's own metadata admit (torch 2.7.0).
# current.txt: the same with requirements/current-overrides.txt replacing their torch, numpy and
#   transformers caps (today's stack). Both pin every transitive package, with the test and eval
#   extras, for CPython 3.11 on Linux x86_64 (torch's PyPI wheel there is the CUDA build, which
#   also runs on CPU, so one lock serves CPU and GPU machines).
set -euo pipefail
cd "$(dirname "$0")/.."
common=(pyproject.toml --extra test --extra eval --python-version 3.11
        --python-platform x86_64-manylinux_2_28 --custom-compile-command "bash requirements/lock.sh"
        --quiet)
uv pip compile "${common[@]}" -o requirements/pinned.txt
uv pip compile "${common[@]}" --override requirements/current-overrides.txt -o requirements/current.txt
grep -c '==' requirements/pinned.txt requirements/current.txt
