# Copyright 2026 The evl_hf authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
transformers' own common test suites, run against EVL as they run against an in-tree model.

The suites are not copied into this repository: the source distribution of the installed transformers version is
fetched with pip (PyPI is the only network these tests need) into a cache folder outside the repository, and its
`tests/` folder is imported from there as the package `transformers_tests`. Collected only when
`EVL_HF_CONFORMANCE=1` (`make test-conformance`), so the default suite never downloads anything.

The cache folder is `$EVL_HF_CONFORMANCE_CACHE`, or `~/.cache/evl_hf/conformance`, one subfolder per transformers
version.
"""

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers


ENABLED = os.environ.get("EVL_HF_CONFORMANCE") == "1"
collect_ignore_glob = [] if ENABLED else ["test_*.py"]

# The common suites import a few modules that live in the transformers repository but are not shipped in its source
# distribution. Each stand-in provides the one name imported, and says what is therefore not run.
STAND_INS = {
    "transformers_tests/__init__.py": "",
    "transformers_tests/exporters/__init__.py": "",
    "transformers_tests/exporters/test_export.py": (
        "class ExportTesterMixin:\n"
        '    """Not in the source distribution: its export tests do not run here. The EVL suite exports the model\n'
        '    itself (tests/test_export.py)."""\n'
    ),
    "transformers_tests/generation/__init__.py": "",
    "transformers_tests/generation/test_utils.py": (
        "class GenerationTesterMixin:\n"
        '    """Not in the source distribution; EVL does not generate, so its testers never inherit it."""\n'
    ),
    "transformers_tests/utils/__init__.py": "",
    "transformers_tests/utils/test_configuration_utils.py": (
        "# Not in the source distribution. ConfigTester reads it only for configs without sub-configs; EVL's has one.\n"
        "config_common_kwargs = {}\n"
    ),
    "utils/fetch_hub_objects_for_ci.py": (
        "def url_to_local_path(url):\n"
        '    """Not in the source distribution: the URL is returned as is (tests that load it need the Hub)."""\n'
        "    return url\n"
    ),
}


def transformers_tests_root() -> Path:
    """Download (once per version) and unpack the `tests/` folder of the installed transformers' source distribution;
    return the folder to put on `sys.path`."""
    version = transformers.__version__
    cache = os.environ.get("EVL_HF_CONFORMANCE_CACHE") or Path.home() / ".cache" / "evl_hf" / "conformance"
    root = Path(cache) / f"transformers-{version}"
    complete = root / ".complete"
    if complete.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, f"transformers=={version}", "--dest", download], check=True)
        (archive,) = Path(download).glob("transformers-*.tar.gz")
        with tarfile.open(archive) as tar:
            prefix = archive.name.removesuffix(".tar.gz") + "/tests/"
            members = [member for member in tar.getmembers() if member.isfile() and member.name.startswith(prefix)]
            for member in members:
                member.name = "transformers_tests/" + member.name.removeprefix(prefix)
            tar.extractall(root, members=members, filter="data")
    for relative_path, text in STAND_INS.items():
        path = root / relative_path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    complete.touch()
    return root


if ENABLED:
    sys.path.insert(0, str(transformers_tests_root()))


def pytest_configure(config):
    # markers the common suites use
    for marker in ("flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test", "generate"):
        config.addinivalue_line("markers", f"{marker}: a marker of transformers' common test suites")
