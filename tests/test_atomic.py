"""Atomic text writes keep the old file whole when a write fails."""

import pytest

from hamjax.io.atomic import write_text


def test_failed_write_keeps_old_content_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    write_text(path, "old\n")
    assert path.read_text() == "old\n"
    with pytest.raises(TypeError):
        write_text(path, b"not text")  # fails inside the write, after the temp file exists
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]
    write_text(path, "new\n")
    assert path.read_text() == "new\n"
