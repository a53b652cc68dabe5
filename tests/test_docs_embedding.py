"""docs/embedding.md: its example of a foreign scheduler runs and its assertions hold."""

from docs_runner import ROOT, python_blocks, run_python_blocks

PAGE = ROOT / "docs" / "embedding.md"


def test_embedding_page_has_one_example_of_at_most_80_lines():
    blocks = python_blocks(PAGE)
    assert len(blocks) == 1
    assert len(blocks[0][1].splitlines()) <= 80


def test_embedding_examples_run(capsys):
    assert run_python_blocks(PAGE) == 1
    out = capsys.readouterr().out
    assert out.startswith("completed\n")
    assert "run charge #2" in out
