"""crashlog: a worker's fatal-signal dump lands in its own file, is collected once, cut
when huge, and the file never outlives the collection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tykworker.system import crashlog


def test_a_fatal_signal_writes_every_thread_stack_to_the_workers_file(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from pathlib import Path
        from tykworker.system import crashlog
        handle = crashlog.enable(crashlog.stack_path(Path({str(tmp_path)!r}), os.getpid()))
        def stuck_in_a_plugin():
            os.kill(os.getpid(), signal.SIGABRT)
        stuck_in_a_plugin()
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert proc.returncode == -signal.SIGABRT
    (path,) = tmp_path.glob("stack.*")
    dump = crashlog.collect(path)
    assert "Fatal Python error: Aborted" in dump
    assert "stuck_in_a_plugin" in dump
    assert not path.exists()
    assert proc.stderr == b""  # nothing went to stderr: the supervisor logs it as one record


def test_collect_missing_empty_and_cut(tmp_path: Path) -> None:
    assert crashlog.collect(tmp_path / "stack.1") == ""
    empty = tmp_path / "stack.2"
    empty.write_text("")
    assert crashlog.collect(empty) == "" and not empty.exists()
    huge = tmp_path / "stack.3"
    huge.write_text("x" * (crashlog.MAX_DUMP + 10))
    text = crashlog.collect(huge)
    assert text.endswith("[dump cut at 64 KiB]")
    assert len(text) < crashlog.MAX_DUMP + 100


def test_stack_path_is_per_pid(tmp_path: Path) -> None:
    assert crashlog.stack_path(tmp_path, os.getpid()) != crashlog.stack_path(tmp_path, 1)
