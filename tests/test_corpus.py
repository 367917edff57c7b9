"""memsinks.corpus: reading documents."""

import pytest


def test_load_documents_errors(tmp_path):
    from memsinks.corpus import load_documents

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(KeyError, match="no 'text' field"):
        load_documents(str(bad))
    txt = tmp_path / "a.txt"
    txt.write_text("one\n\ntwo\n")
    assert load_documents(str(txt)) == ["one", "two"]
