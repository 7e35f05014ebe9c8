"""The README's two opening commands stay true, and CI runs the second one."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (REPO / 'README.md').read_text())


def test_readme_opens_with_demo_and_test_commands():
    demo, test = readme_commands()[:2]
    assert 'pip install -e .' in demo and demo.endswith('eatai demo')
    assert 'pip install -e ".[test]"' in test and 'pytest' in test


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in (REPO / '.ci' / 'run').read_text()


def test_readme_shows_a_demo_table():
    text = (REPO / 'README.md').read_text()
    assert 'DEMO_TABLE' not in text and 'E-AT fine-tuning' in text
