#!/usr/bin/env bash
# Create a virtualenv holding a pinned Prefect server, for integration tests.
#
#   scripts/install-prefect.sh <2|3|3.9> <dest-venv-dir>
#
#   2   -> prefect==2.18.3 (+ griffe<1 and pydantic<2, needed on today's index)
#   3   -> prefect==3.8.8 with fastapi==0.150.0 (newer fastapi breaks server start)
#   3.9 -> prefect==3.9.1 (the newest 3.x on the index; it resolves its own pins)
#
# Every other package is held to the exact versions in
# scripts/prefect<N>-constraints.txt (a pip freeze of a venv that was verified
# to start and serve the API). Idempotent: a marker file in the venv records
# what was installed; when it matches and prefect imports at the right version,
# nothing is done. The time each install took is printed and kept in
# <dest>/.prefect-install.log. Set PYTHON to choose the interpreter (python3).
set -euo pipefail

usage() { echo "usage: $0 <2|3|3.9> <dest-venv-dir>" >&2; exit 2; }
[ $# -eq 2 ] || usage
major=$1
dest=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}

case $major in
  2) version=2.18.3; pins=(prefect==2.18.3 griffe==0.49.0 pydantic==1.10.27) ;;
  3) version=3.8.8;  pins=(prefect==3.8.8 fastapi==0.150.0) ;;
  3.9) version=3.9.1; pins=(prefect==3.9.1) ;;
  *) usage ;;
esac
constraints=$here/prefect${major//./}-constraints.txt
[ -f "$constraints" ] || { echo "missing $constraints" >&2; exit 1; }

mkdir -p "$(dirname "$dest")"
dest=$(cd "$(dirname "$dest")" && pwd)/$(basename "$dest")
marker=$dest/.prefect-install
want="prefect=$version pins=${pins[*]} constraints=$(sha256sum "$constraints" | cut -c1-16) python=$("$python" -c 'import sys; print(sys.version.split()[0])')"

installed_version() {
  "$dest/bin/python" -c 'import importlib.metadata as m; print(m.version("prefect"))' 2>/dev/null || true
}

# One installer per destination at a time.
exec 9>"$dest.lock"
flock 9

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ -x "$dest/bin/prefect" ] \
   && [ "$(installed_version)" = "$version" ]; then
  echo "prefect $version already installed in $dest"
  exit 0
fi

if [ -e "$dest" ]; then
  # Only ever remove something that is a virtualenv (or an empty folder).
  if [ -f "$dest/pyvenv.cfg" ] || [ -z "$(ls -A "$dest")" ]; then
    echo "replacing $dest (marker missing or out of date)"
    rm -rf "$dest"
  else
    echo "$dest exists and is not a virtualenv; refusing to touch it" >&2
    exit 1
  fi
fi

start=$(date +%s)
"$python" -m venv "$dest"
# (the grep drops this machine's noise about absent local index folders)
"$dest/bin/python" -m pip install --quiet --disable-pip-version-check \
  "${pins[@]}" -c "$constraints" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
got=$(installed_version)
if [ "$got" != "$version" ]; then
  echo "installed prefect is '$got', expected $version" >&2
  exit 1
fi
# The server app must import (a wrong fastapi/griffe/pydantic fails here).
scratch=$(mktemp -d)
PREFECT_HOME=$scratch "$dest/bin/python" -c 'import prefect.server.api.server as s; s.create_app()' >/dev/null
rm -rf "$scratch"
elapsed=$(( $(date +%s) - start ))
printf '%s\n' "$want" >"$marker"
echo "$(date -u +%FT%TZ) installed prefect $version in ${elapsed}s" | tee -a "$dest/.prefect-install.log"
