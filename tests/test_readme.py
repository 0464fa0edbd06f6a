"""The README is the front door: at most 12 KB, the two commands that set up and run the service and the tests,
the one CI runs, and links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_BYTES = 12_000


def test_the_readme_fits_the_limit():
    size = README.stat().st_size
    assert size <= MAX_BYTES, f"README.md is {size} bytes, over {MAX_BYTES}: move reference text to docs/"


def test_the_two_commands_are_there_and_ci_runs_the_test_one():
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines()]
    assert "bash scripts/serve.sh" in commands and "bash scripts/test.sh" in commands
    for script in ("scripts/serve.sh", "scripts/test.sh"):
        assert (REPO / script).is_file(), script
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/test\.sh\b", ci, flags=re.M), (
        ".ci/run must run the README's test command"
    )


def test_relative_links_lead_to_files():
    targets = re.findall(r"\]\(([^)#]+)\)", README.read_text())
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "expected links to docs/, bench/, deploy/ and the model card"
    assert [t for t in local if not (REPO / t).exists()] == []
