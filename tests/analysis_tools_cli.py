"""Runs a script of tools/analysis_tools as its users do (``python tools/analysis_tools/<name>.py ...``): one CPU
thread, unbuffered output, from the repository root; and reads a tool's refusal of bad arguments."""
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def run_tool(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def usage_error(entry, argv, capsys) -> str:
    """What ``entry(argv)`` (a tool's ``main`` or ``parse_args``) writes to stderr as it exits with argparse's usage
    error (exit code 2)."""
    with pytest.raises(SystemExit) as exit_:
        entry(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err
