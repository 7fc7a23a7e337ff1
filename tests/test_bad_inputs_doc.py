"""docs/BAD_INPUTS.md's generated tables list what the tests' cases produce today: a changed or
new message must be written into the document (python tests/render_bad_inputs.py)."""
import render_bad_inputs


def test_generated_tables_are_current():
    with open(render_bad_inputs.DOC) as f:
        text = f.read()
    assert render_bad_inputs.render(text) == text, "run: python tests/render_bad_inputs.py"
