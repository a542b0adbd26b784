"""What the commands share (evl_hf/commands/utils.py): argument types checked at parse time, atomic writes."""

import argparse
import os

import pytest

from evl_hf.commands.utils import atomic_write, int_at_least, int_between, positive_int, probability


def test_argument_types_refuse_bad_values_naming_the_bound():
    assert positive_int("3") == 3 and int_between(0, 51)("51") == 51 and probability("0.25") == 0.25
    for parse, text, message in [
        (positive_int, "0", "must be at least 1, got 0"),
        (positive_int, "two", "'two' is not a whole number"),
        (int_at_least(2, " (320 is the usual choice)"), "1", "must be at least 2, got 1 (320 is the usual choice)"),
        (int_between(0, 51), "60", "must be between 0 and 51, got 60"),
        (probability, "1", "must be between 0 and 1 (exclusive), got 1.0"),
        (probability, "half", "'half' is not a number"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse(text)


def test_a_bad_value_is_a_parse_error_that_names_the_flag(capsys):
    parser = argparse.ArgumentParser(prog="evl-hf predict")
    parser.add_argument("--top_k", type=positive_int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--top_k", "0"])
    assert exit_info.value.code == 2
    assert "argument --top_k: must be at least 1, got 0" in capsys.readouterr().err


def test_atomic_write_replaces_the_file_when_the_block_ends(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("old")
    with atomic_write(path) as temporary:
        assert os.path.dirname(temporary) == str(tmp_path)  # the same file system: os.replace cannot fail over it
        with open(temporary, "w") as file:
            file.write("new")
        assert path.read_text() == "old"  # readers see the old file until the end
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["list.txt"]


def test_atomic_write_keeps_the_old_file_on_an_error_and_removes_the_temporary(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as temporary:
        with open(temporary, "w") as file:
            file.write("half")
        raise RuntimeError("stopped")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["list.txt"]


def test_atomic_write_replaces_what_a_killed_run_left_or_writes_a_name_of_its_own(tmp_path):
    left = tmp_path / ".clip.mp4.partial"
    left.write_text("half a video")
    with atomic_write(tmp_path / "clip.mp4") as temporary:
        assert temporary == str(left)
        with open(temporary, "w") as file:
            file.write("video")
    with (
        atomic_write(tmp_path / "a.png", unique=True) as first,
        atomic_write(tmp_path / "a.png", unique=True) as second,
    ):
        assert first != second
        for temporary in (first, second):
            with open(temporary, "w") as file:
                file.write(temporary)
    assert sorted(os.listdir(tmp_path)) == ["a.png", "clip.mp4"]
    assert (tmp_path / "a.png").read_text() == first  # the last one renamed wins, whole
