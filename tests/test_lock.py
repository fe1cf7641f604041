"""The experiment-directory lock refuses a second run and vanishes with the process."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nawsv.utils.errors import ExperimentError
from nawsv.utils.lock import directory_lock


def test_second_holder_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from nawsv.utils.lock import directory_lock\n"
        "with directory_lock(%r, 'stage 3'):\n"
        "    print('locked', flush=True); time.sleep(30)\n") % (str(Path(__file__).parents[1]), str(tmp_path))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExperimentError, match=r"in use by stage 3 \(pid \d+"):
            with directory_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with directory_lock(tmp_path):              # the killed holder left no stale lock
        pass
