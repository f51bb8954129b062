#!/usr/bin/env bash
# The Python packages of a container image, fetched outside it: every wheel that REQUIREMENTS needs
# on Linux x86-64 for Python PYTHON_VERSION (the image's base), in DIR beside a copy of REQUIREMENTS
# and the Python version. The Dockerfile installs from DIR with `pip install --no-index`, so the
# image build itself needs no network. Nothing is fetched when DIR already holds what it would get.
#
#   deploy/container/wheelhouse.sh build/requirements-cpu.txt 3.11 build/wheels-cpu   # the Makefile's wheels-cpu
set -euo pipefail
if [ $# -ne 3 ]; then
    sed -n '2,7s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
requirements=$1 python_version=$2 dir=$3
python=${PYTHON:-python3}
[ -f "$requirements" ] || { echo "error: $requirements: no such file (python -m service.dependencies writes it)" >&2; exit 1; }
[[ $python_version =~ ^3\.[0-9]+$ ]] || { echo "error: $python_version: not a Python version such as 3.11" >&2; exit 1; }
if [ -f "$dir/python-version" ] && [ "$(cat "$dir/python-version")" = "$python_version" ] \
    && cmp -s "$requirements" "$dir/requirements.txt"; then
    echo "$dir: up to date ($(ls "$dir"/*.whl | wc -l) wheels for Python $python_version)"
    exit 0
fi
rm -rf "$dir"
mkdir -p "$dir"
# Manylinux wheels of every glibc from 2.17 (manylinux2014) to 2.36 (Debian 12; Ubuntu 24.04, the
# GPU base, has 2.39): pip takes only the platforms it is given, not the older ones they imply.
platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
"$python" -m pip download --quiet --dest "$dir" --only-binary=:all: --python-version "$python_version" \
    --implementation cp "${platforms[@]}" -r "$requirements"
cp "$requirements" "$dir/requirements.txt"
echo "$python_version" > "$dir/python-version"
echo "$dir: $(ls "$dir"/*.whl | wc -l) wheels for Python $python_version ($(du -sh "$dir" | cut -f1))"
