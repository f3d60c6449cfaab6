"""Every relative link of the README and docs/ points to a file of the repository and, where it names a section
(``file.md#section``), to a heading of that file (GitHub's anchor rules: lower case, punctuation dropped, spaces
as hyphens). Headings get renamed as the docs grow; a link left behind would send readers nowhere."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '**', '*.md'),
                                                                              recursive=True))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def without_code_blocks(text: str) -> str:
    return re.sub(r'^```.*?^```', '', text, flags=re.M | re.S)


def prose(text: str) -> str:
    """``text`` without code blocks and inline code (``kernel[grid](...)`` is not a link)."""
    return re.sub(r'`[^`\n]*`', '', without_code_blocks(text))


def links(page: str):
    with open(os.path.join(ROOT, page)) as f:
        text = prose(f.read())
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if not re.match(r'[a-z]+:', target):  # http(s), mailto: not ours to check offline
            yield target


def headings(path: str):
    with open(path) as f:
        return {anchor(h) for h in re.findall(r'^#+ (.*)$', without_code_blocks(f.read()), flags=re.M)}


def test_the_checker_reads_anchors_as_github_does():
    assert anchor('Results: one H200, 2026-11-30 to 2026-12-02') == 'results-one-h200-2026-11-30-to-2026-12-02'
    assert anchor('What a new input size costs: `benchmark_new_shapes.py`') == \
        'what-a-new-input-size-costs-benchmark_new_shapespy'
    assert list(links('README.md')), 'no link found in the README: the pattern is broken'


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, section = target.partition('#')
        resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else \
            os.path.join(ROOT, page)
        if not os.path.exists(resolved):
            broken.append(f'{target}: no such file')
        elif section and resolved.endswith('.md') and section not in headings(resolved):
            broken.append(f'{target}: no heading with that anchor in {os.path.relpath(resolved, ROOT)}')
    assert not broken, f'{page}: ' + '; '.join(broken)
