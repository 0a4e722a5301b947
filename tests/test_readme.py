"""The README's Python examples run as written (its ``>>>`` blocks, as doctests)."""

import doctest
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_examples_run():
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if ">>>" in b]
    assert blocks, "the README has no >>> example"
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for i, block in enumerate(blocks):
        runner.run(parser.get_doctest(block, {}, f"README block {i}", str(README), 0))
    failed, attempted = runner.summarize(verbose=False)
    assert attempted >= 8 and failed == 0
