"""Helpers shared by the command-line tools (``tools/analysis_tools``, ``tools/deployment``)."""
import argparse
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
