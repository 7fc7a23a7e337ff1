"""Writes the generated tables of docs/BAD_INPUTS.md from the tests' own cases, by running each
case and recording the message it actually produces.

    python tests/render_bad_inputs.py          # rewrite the generated tables in place
    python tests/render_bad_inputs.py --check  # exit 1 if the document is out of date

Each generated table sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->` lines;
tests/test_bad_inputs_doc.py fails when a table differs from what its cases produce now, so a
changed message cannot go unlisted.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, os.pardir, "docs", "BAD_INPUTS.md")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _raised(call) -> str:
    import torch

    torch.manual_seed(0)  # cases drawing random batches give the same message every time
    try:
        call()
    except Exception as e:  # noqa: BLE001 - recording what each case raises is the point
        return f"`{type(e).__name__}`: {_cell(str(e))}"
    return "no error"


def _table(head: str, rows) -> str:
    lines = [f"| {head} | result |", "|---|---|"]
    lines += [f"| {_cell(name)} | {result} |" for name, result in rows]
    return "\n".join(lines)


def ops_table() -> str:
    import test_api as t

    rows = [(name, _raised(lambda call=call: call(*t.batch())))
            for name, call, _, _ in t.BAD_INPUTS]
    rows += [(f"ANMConfig({', '.join(f'{k}={v!r}' for k, v in bad.items())})",
              _raised(lambda bad=bad: t.ANMConfig(**bad))) for bad in t.BAD_CONFIGS]
    return _table("input", rows)


def values_table() -> str:
    import test_bad_values as t

    rows = [(name, _raised(call)) for name, call, _, _ in t.VALUE_CASES]
    rows += [(f"ANMConfig({', '.join(f'{k}={v!r}' for k, v in bad.items())})",
              _raised(lambda bad=bad: t.ANMConfig(**bad))) for bad in t.CONFIG_CASES]
    return _table("input", rows)


def settings_table() -> str:
    import test_train_bad_settings as t
    from anm_fast.train.cli import main

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags, _ in t.SETTINGS_CASES:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(t.BASE + flags + ["--out", os.path.join(tmp, "run")])
            rows.append((f"`{' '.join(flags)}`", f"exit {code}: `{_cell(err.getvalue())}`"))
    return _table("flags", rows)


TABLES = {"ops": ops_table, "values": values_table, "settings": settings_table}


def render(text: str) -> str:
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end: {name} -->)",
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC} has no generated table {name!r}")
        table = make()
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main(argv) -> int:
    sys.path.insert(0, HERE)
    with open(DOC) as f:
        text = f.read()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOC} is out of date: run python tests/render_bad_inputs.py")
            return 1
        return 0
    with open(DOC, "w") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
