# Sourced by scripts/test, scripts/demo and scripts/check-dist: create .venv/ beside pyproject.toml
# on first use and (re)install the project with one of its extras whenever pyproject.toml changes.
#   source scripts/_venv.sh          the [dev] extra: tests, lint, types, browser, chart, build
#   source scripts/_venv.sh demo     only what the demo needs (scripts/demo)
# It says what it installs and shows each package as pip collects it: a first install takes
# minutes, and a silent terminal for that long looks hung.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# A script that sources this without arguments passes its own: only a known extra counts.
case "${1:-}" in
    demo | test | dev) extra=$1 ;;
    *) extra=dev ;;
esac
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $("$python" --version 2>&1)" >&2
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$extra-$(sha1sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "==> installing request-aborted[$extra] into .venv (first run or pyproject.toml changed)" >&2
    started=$SECONDS
    .venv/bin/python -m pip install --quiet --upgrade pip
    # Only pip's progress lines and errors: one line per package it collects.
    .venv/bin/python -m pip install --progress-bar off -e ".[$extra]" 2>&1 \
        | sed -un -e '/^Collecting /p' -e '/^Successfully installed/p' -e '/ERROR/p' >&2
    echo "==> installed in $((SECONDS - started)) s" >&2
    rm -f .venv/.installed-"$extra"-*
    touch "$stamp"
fi
