"""Helpers shared by the command-line tools (``tools/analysis_tools``, ``tools/deployment``)."""
import argparse
import subprocess
from typing import Optional


def window_side(text: str) -> Optional[int]:
    """argparse type of a ``--window-size`` entry: a positive int, or 'none' (that stage over its whole map)."""
    if text.strip().lower() == 'none':
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive int or "none", got {text!r}')
    return value


def git_commit(repo: str) -> str:
    """The short commit of the checkout at ``repo`` for a result's record, with '+uncommitted changes' when tracked
    files differ from it; '' when git cannot tell."""
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ''
    return commit + ('+uncommitted changes' if commit and dirty else '')
