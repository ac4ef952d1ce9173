#!/usr/bin/env bash
# Usage: tools/make_venv.sh VENV
# Create the virtualenv VENV (with pip in it) on a Python 3.8-3.11, which mxnet 1.9.1 needs.
#
# 1. tools/find_python.sh names one ($PYTHON, or the first 3.8-3.11 on PATH): `python -m venv VENV`.
# 2. PATH has none (typical in 2026: python3 is 3.12 or 3.13): uv provisions Python 3.11. uv is the one
#    on PATH, else it is installed from PyPI into a small bootstrap environment made with whatever
#    python3 exists ($D2LBN_UV_HOME, default ~/.cache/d2lbn/uv-bootstrap, reused by later runs). Then
#    `uv venv --python 3.11 VENV` (pip from ensurepip): uv uses a CPython 3.11 it finds (on PATH, or one
#    it installed before) or downloads a managed build of it (about 30 MB) into its own folder.
# 3. That fails too (no network, no uv): one message lists the ways out; exit 1.
# Only bash builtins are used to find Pythons, so tests/test_python_choice.py can run this with fake PATHs.
set -uo pipefail

venv=${1:?usage: tools/make_venv.sh VENV}
here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.

ways_out() {
  printf '%s\n' "" \
    "d2lbn needs Python 3.8-3.11 (mxnet 1.9.1 needs numpy<1.24, which has no wheels for 3.12 and newer)," \
    "and none could be found or provisioned here: $1." \
    "Any one of these fixes it:" \
    "  * a Python 3.11 you have:  make book PYTHON=/path/to/python3.11  (or make test, make lab)" \
    "  * uv:         install uv (https://docs.astral.sh/uv/), then  uv python install 3.11  and rerun make" \
    "                (uv downloads its CPython build from github.com once)" \
    "  * pyenv:      pyenv install 3.11 && pyenv local 3.11       then rerun make" \
    "  * conda:      conda create -n py311 python=3.11 && conda activate py311      then rerun make" \
    "  * deadsnakes (Ubuntu):  sudo add-apt-repository ppa:deadsnakes/ppa" \
    "                          sudo apt install python3.11 python3.11-venv          then rerun make" >&2
  exit 1
}

python=$("$BASH" "$here/find_python.sh")
case $? in
  0)
    echo "Creating $venv with $python (Python $("$python" -c 'import sys; print(sys.version.split()[0])'))"
    exec "$python" -m venv "$venv"
    ;;
  1) ;;               # none on PATH: the uv route below
  *) exit 2 ;;        # $PYTHON given but unusable: find_python.sh has said why
esac

start=$SECONDS
found=""
for name in python3 python; do
  while IFS= read -r path; do
    [[ -n $path ]] || continue
    v=$("$path" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
    found="$name is Python $v"; break 2
  done <<< "$(type -aP "$name")"
done
echo "No Python 3.8-3.11 on PATH (${found:-no python3 at all}); mxnet 1.9.1 needs one."
echo "Provisioning Python 3.11 with uv: installing uv takes about 20 s the first time; uv then uses a"
echo "CPython 3.11 it finds or downloads one (about 30 MB, under a minute on a normal connection)."

uv=$(type -P uv)
if [[ -z $uv ]]; then
  boot=${D2LBN_UV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/d2lbn/uv-bootstrap}
  if [[ -x $boot/bin/uv ]]; then
    uv=$boot/bin/uv
  else
    bootpy=""
    for name in python3 python; do
      while IFS= read -r path; do
        [[ -n $path ]] && "$path" -c 'import sys' 2>/dev/null && { bootpy=$path; break 2; }
      done <<< "$(type -aP "$name")"
    done
    [[ -n $bootpy ]] || ways_out "no uv on PATH, and no python3 to install it with"
    echo "Installing uv from PyPI into $boot (with $bootpy) ..."
    rm -rf "$boot"
    if "$bootpy" -m venv "$boot" && "$boot/bin/python" -m pip install -q uv; then
      uv=$boot/bin/uv
    else
      # No venv module (Debian/Ubuntu without python3-venv): pip's --target needs neither venv nor root.
      rm -rf "$boot"
      echo "(python3 -m venv failed; trying python3 -m pip install --target instead)"
      "$bootpy" -m pip install -q --target "$boot/lib" uv && [[ -x $boot/lib/bin/uv ]] \
        || ways_out "could not install uv from PyPI with $bootpy"
      mkdir -p "$boot/bin" && ln -sf ../lib/bin/uv "$boot/bin/uv"
      uv=$boot/bin/uv
    fi
    echo "uv installed in $((SECONDS - start)) s: $("$uv" --version)"
  fi
fi

echo "Creating $venv with $uv venv --python 3.11 ..."
# A virtualenv left by an interrupted run is replaced (uv refuses to reuse one without being told);
# any other existing folder is left alone (uv refuses it).
[[ -f $venv/pyvenv.cfg ]] && export UV_VENV_CLEAR=1
if ! "$uv" venv --python 3.11 "$venv"; then
  ways_out "uv found no Python 3.11 and could not download one"
fi
# pip from the interpreter's own ensurepip (no download; make then upgrades it from the registry, with
# pip's certificate settings), else from uv.
"$venv/bin/python" -m ensurepip --upgrade --default-pip >/dev/null \
  || "$uv" pip install -q --python "$venv/bin/python" pip \
  || ways_out "uv made $venv but could not put pip in it"
echo "Python $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])') ready in $venv" \
     "via uv, $((SECONDS - start)) s."
