#!/usr/bin/env bash
# Print the path of a Python 3.8-3.11 for d2lbn's virtualenv. mxnet 1.9.1 needs numpy<1.24, whose wheels
# stop at Python 3.11, so 3.12 and newer cannot be used for .venv.
#
#   $PYTHON set:  it is the only candidate; exit 2 with a message if it does not run or is not 3.8-3.11.
#   otherwise:    the first of python3.11 python3.10 python3.9 python3.8 python3 python on PATH (every
#                 copy, in PATH order) that runs and is 3.8-3.11 (a pyenv shim of a version pyenv has
#                 not selected fails to run, and is skipped).
#   none found:   exit 1 and print nothing; tools/make_venv.sh then provisions Python 3.11 with uv.
#
# Only bash builtins are used, so the choice can be tested with a PATH holding nothing but fake pythons
# (tests/test_python_choice.py).
set -uo pipefail

# Prints "MAJOR.MINOR" of interpreter $1, or fails.
version_of() {
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

# Succeeds when "MAJOR.MINOR" $1 is 3.8-3.11.
supported() {
  local major=${1%%.*} minor=${1#*.}
  [[ $major == 3 && $minor =~ ^[0-9]+$ ]] && ((minor >= 8 && minor <= 11))
}

if [[ -n ${PYTHON:-} ]]; then
  if ! version=$(version_of "$PYTHON"); then
    echo "PYTHON=$PYTHON does not run. Point PYTHON at a Python 3.8-3.11, or unset it and make" \
         "provisions one." >&2
    exit 2
  fi
  if ! supported "$version"; then
    echo "PYTHON=$PYTHON is Python $version; d2lbn needs Python 3.8-3.11 (mxnet 1.9.1 needs numpy<1.24," \
         "which has no wheels for 3.12 and newer). Point PYTHON at a 3.11, or unset it and make provisions" \
         "one with uv." >&2
    exit 2
  fi
  echo "$PYTHON"
  exit 0
fi

for name in python3.11 python3.10 python3.9 python3.8 python3 python; do
  while IFS= read -r path; do
    [[ -n $path ]] || continue
    version=$(version_of "$path") || continue
    if supported "$version"; then
      echo "$path"
      exit 0
    fi
  done <<< "$(type -aP "$name")"
done
exit 1
