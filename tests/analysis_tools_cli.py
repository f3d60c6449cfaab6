"""Runs a script of tools/analysis_tools as its users do (``python tools/analysis_tools/<name>.py ...``): one CPU
thread, unbuffered output, from the repository root."""
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def run_tool(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
