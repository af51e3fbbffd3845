"""The documentation: docs/configuration.md is generated from `SOFTConfig` and must match it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_up_to_date():
    result = subprocess.run([sys.executable, "docs/make_config_reference.py", "--check"], cwd=ROOT)
    assert result.returncode == 0, "docs/configuration.md is stale: run `python docs/make_config_reference.py`"
