#!/usr/bin/env bash
# The pure layers as a user would run them anywhere: not root, no bcc, no kernel programs.
# A copy of the tree, a venv of PyPI packages only (no system site-packages, so no bcc), and
# `pytest -m "not kernel"` as nobody. Proves the layering: a test that needs root or bcc and
# is not marked `kernel` fails here (tests/conftest.py says what the marker covers).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/xlb-unprivileged.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 tar cf - | tar xf - -C "$work/src"
if [ -d ../shared ]; then ln -s "$(cd ../shared && pwd)" "$work/shared"; fi
/usr/bin/python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q -e "$work/src[test]"
if "$work/venv/bin/python" -c "import bcc" 2>/dev/null; then
  echo "test-unprivileged: bcc is importable in the plain venv; the check would prove nothing" >&2
  exit 1
fi
chmod -R a+rX "$work"
cd "$work/src"
echo "test-unprivileged: pytest -m 'not kernel' as nobody, without bcc"
runuser -u nobody -- "$work/venv/bin/python" -m pytest -q -m "not kernel" -p no:cacheprovider
