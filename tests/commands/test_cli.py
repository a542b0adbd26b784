"""The `evl-hf` command as a user starts it: the console script and `python -m evl_hf`."""

import os
import shutil
import subprocess
import sys

import pytest

from evl_hf.commands import SUBCOMMANDS, main


def test_python_dash_m_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "evl_hf", "--help"], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert name.replace("_", "-") in result.stdout


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: evl-hf" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


def test_console_script_is_installed_with_the_package():
    script = shutil.which("evl-hf", path=os.path.dirname(sys.executable))
    assert script is not None, "pip install should put evl-hf next to the interpreter"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("evl-hf ")
