#!/usr/bin/env bash
# One-command environment for mmmambavision: creates .venv in the repo root with the pinned OpenMMLab stack.
#
#   bash tools/setup_env.sh
#
# Idempotent: a second run checks what is there and finishes in seconds. The mmcv 2.1.0 wheel (compiled ops,
# ~10 min to build on 2 cores) is cached outside the repo under
#   ${MMMV_CACHE:-$HOME/.cache/mmmambavision}/wheels/py<X.Y>-torch<V>/
# keyed by Python and torch version, so a fresh clone on the same machine reuses it.
set -euo pipefail

PYTHON=${PYTHON:-python3.11}
TORCH_VERSION=2.13.0
MMCV_VERSION=2.1.0
# ONNX export (tools/deployment/export_onnx.py): torch's torch.export-based exporter needs onnxscript
ONNX_VERSION=1.23.2
ORT_VERSION=1.31.1
ONNXSCRIPT_VERSION=0.7.2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$repo/.venv
step=""
trap 'echo "setup_env.sh: FAILED at step: $step" >&2; echo "  fix the cause shown above and re-run: bash tools/setup_env.sh (it resumes where it stopped)" >&2' ERR

say() { echo "[setup_env] $*"; }

step="find Python 3.11"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup_env.sh: $PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2; exit 1
fi

step="create virtualenv $venv"
if [[ ! -x $venv/bin/python ]]; then
  say "creating $venv"
  "$PYTHON" -m venv "$venv"
fi
py=$venv/bin/python
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }

have() {  # have <dist> <version>: is that exact version installed?
  "$py" - "$1" "$2" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]).split("+")[0] == sys.argv[2] else 1)
PY
}

step="install torch==$TORCH_VERSION"
if ! have torch $TORCH_VERSION; then
  say "installing torch $TORCH_VERSION"
  pip install "torch==$TORCH_VERSION"
fi

# torch pulls in a recent setuptools; mmcv 2.1.0 and mmengine's mmdet::/mmseg:: lookup need pkg_resources.
step="pin setuptools<82 (after torch)"
if ! "$py" -c 'import pkg_resources' >/dev/null 2>&1 || ! "$py" - <<'PY' >/dev/null 2>&1
import sys, setuptools
sys.exit(0 if int(setuptools.__version__.split('.')[0]) < 82 else 1)
PY
then
  say "pinning setuptools<82"
  pip install "setuptools<82" wheel
fi

step="install mmengine and small dependencies"
if ! have mmengine 0.10.7 || ! "$py" -c 'import pytest, pycocotools, ftfy, regex, cv2' >/dev/null 2>&1; then
  say "installing mmengine 0.10.7, pycocotools, ftfy, regex, pytest, numpy, opencv"
  pip install "mmengine==0.10.7" "pycocotools>=2.0.9" ftfy regex pytest "numpy>=2" opencv-python-headless \
    "torch==$TORCH_VERSION"
fi

pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
cache=${MMMV_CACHE:-$HOME/.cache/mmmambavision}/wheels/py$pyver-torch$TORCH_VERSION
step="build or reuse mmcv $MMCV_VERSION wheel (cache $cache)"
if ! have mmcv $MMCV_VERSION || ! "$py" -c 'import mmcv.ops' >/dev/null 2>&1; then
  mkdir -p "$cache"
  if ! ls "$cache"/mmcv-$MMCV_VERSION-*.whl >/dev/null 2>&1; then
    say "building mmcv $MMCV_VERSION with compiled ops (about 10 min on 2 cores; cached afterwards in $cache)"
    build=$(mktemp -d)
    pip download --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$build"
    tar xzf "$build"/mmcv-$MMCV_VERSION.tar.gz -C "$build"
    # torch >= 2.12 headers need C++20; mmcv's setup.py hard-codes c++14/17.
    sed -i 's/-std=c++14/-std=c++20/g; s/-std=c++17/-std=c++20/g' "$build"/mmcv-$MMCV_VERSION/setup.py
    pip install ninja psutil
    (cd "$build"/mmcv-$MMCV_VERSION && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$build/dist" . )
    cp "$build"/dist/mmcv-$MMCV_VERSION-*.whl "$cache"/
    rm -rf "$build"
  fi
  say "installing mmcv from $(ls "$cache"/mmcv-$MMCV_VERSION-*.whl)"
  pip install "$cache"/mmcv-$MMCV_VERSION-*.whl "torch==$TORCH_VERSION"
fi

step="install mmdet 3.3.0 and mmsegmentation 1.2.2"
if ! have mmdet 3.3.0 || ! have mmsegmentation 1.2.2; then
  say "installing mmdet 3.3.0, mmsegmentation 1.2.2"
  pip install "mmdet==3.3.0" "mmsegmentation==1.2.2" "mmcv==$MMCV_VERSION" "torch==$TORCH_VERSION"
fi

step="install triton (CPU interpreter for the scan kernel tests)"
if ! "$py" -c 'import triton' >/dev/null 2>&1; then
  say "installing triton"
  pip install "triton>=3.4" "torch==$TORCH_VERSION" || say "triton not installable here; its tests will be skipped"
fi

step="install onnx $ONNX_VERSION, onnxruntime $ORT_VERSION, onnxscript $ONNXSCRIPT_VERSION (ONNX export)"
if ! have onnx $ONNX_VERSION || ! have onnxruntime $ORT_VERSION || ! have onnxscript $ONNXSCRIPT_VERSION; then
  say "installing onnx $ONNX_VERSION, onnxruntime $ORT_VERSION, onnxscript $ONNXSCRIPT_VERSION"
  pip install "onnx==$ONNX_VERSION" "onnxruntime==$ORT_VERSION" "onnxscript==$ONNXSCRIPT_VERSION" \
    "torch==$TORCH_VERSION"
fi

step="install mmmambavision (editable)"
if [[ $(cd / && "$py" -c 'import mmmambavision, os; print(os.path.dirname(os.path.dirname(mmmambavision.__file__)))' 2>/dev/null) != "$repo" ]]; then
  say "installing mmmambavision (editable)"
  pip install --no-deps --no-build-isolation -e "$repo"
fi

step="check the stack imports"
"$py" - <<'PY'
import torch, mmengine, mmcv, mmcv.ops, mmdet, mmseg, mmmambavision
print(f"[setup_env] ready: torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__} "
      f"(ops compiled), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")
PY
