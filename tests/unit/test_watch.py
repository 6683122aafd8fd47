"""``serve --reload``'s watcher (supervisor/watch.py): what counts as a change, debouncing
on an injected clock, and the ``--reload`` switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tykworker.config import Settings, load_settings
from tykworker.errors import ConfigError
from tykworker.supervisor.watch import Watcher, changed_paths, snapshot, watched_folders


def touch(path: Path, text: str, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_snapshot_lists_plugin_files_and_skips_caches_and_swap_files(tmp_path: Path):
    touch(tmp_path / "mw" / "a.py", "x", 1)
    touch(tmp_path / "mw" / "pkg" / "b.py", "x", 1)
    touch(tmp_path / "mw" / "__pycache__" / "a.cpython-311.pyc", "x", 1)
    touch(tmp_path / "mw" / ".a.py.swp", "x", 1)
    touch(tmp_path / "mw" / "a.py~", "x", 1)
    touch(tmp_path / "bundles" / "b1" / "manifest.json", "{}", 1)
    found = snapshot([tmp_path / "mw", tmp_path / "bundles", tmp_path / "missing"])
    names = sorted(Path(p).relative_to(tmp_path).as_posix() for p in found)
    assert names == ["bundles/b1/manifest.json", "mw/a.py", "mw/pkg/b.py"]
    assert len(snapshot([tmp_path], limit=2)) == 2


def test_changed_paths():
    assert changed_paths({"a": (1, 1, 1), "b": (1, 1, 1)}, {"a": (2, 1, 1), "c": (1, 1, 1)}) == [
        "a",
        "b",
        "c",
    ]
    assert changed_paths({"a": (1, 1, 1)}, {"a": (1, 1, 1)}) == []


def test_a_save_is_reported_once_after_the_folder_is_quiet(tmp_path: Path):
    plugin = tmp_path / "a.py"
    touch(plugin, "v1", 1_000)
    watcher = Watcher([tmp_path], interval=0.5, quiet=1.0)
    assert watcher.poll(0.0) == []  # no change
    touch(plugin, "v2", 2_000)
    assert watcher.poll(0.1) == []  # between polls: not even looked at
    assert watcher.wait_time(0.1) == pytest.approx(0.4)
    assert watcher.poll(0.5) == []  # seen, waiting for quiet
    touch(tmp_path / "b.py", "new", 3_000)  # another save within the quiet time
    assert watcher.poll(1.0) == []
    assert watcher.poll(1.5) == []  # 0.5 s quiet: not yet
    assert watcher.poll(2.0) == [str(tmp_path / "a.py"), str(tmp_path / "b.py")]
    assert watcher.poll(2.5) == [] and watcher.poll(10.0) == []  # reported once


def test_removing_a_file_is_a_change(tmp_path: Path):
    touch(tmp_path / "a.py", "v1", 1)
    watcher = Watcher([tmp_path], interval=0.0, quiet=0.0)
    (tmp_path / "a.py").unlink()
    assert watcher.poll(1.0) == []
    assert watcher.poll(2.0) == [str(tmp_path / "a.py")]


def test_retarget_watches_the_new_folders_from_their_current_state(tmp_path: Path):
    touch(tmp_path / "old" / "a.py", "x", 1)
    touch(tmp_path / "new" / "a.py", "x", 1)
    watcher = Watcher([tmp_path / "old"], interval=0.0, quiet=0.0)
    watcher.retarget([tmp_path / "new"])
    touch(tmp_path / "old" / "a.py", "y", 2)
    assert watcher.poll(1.0) == [] and watcher.poll(2.0) == []
    touch(tmp_path / "new" / "a.py", "y", 2)
    assert watcher.poll(3.0) == [] and watcher.poll(4.0) == [str(tmp_path / "new" / "a.py")]


def test_reload_switch_and_folders(tmp_path: Path):
    assert Watcher.for_settings(Settings()) is None
    assert load_settings({"reload": "true"}, environ={}).reload is True
    assert load_settings({}, environ={"TYKWORKER_RELOAD": "off"}).reload is False
    config = tmp_path / "c.toml"
    config.write_text("reload = true\n")
    assert load_settings({"config": str(config)}, environ={}).reload is True
    with pytest.raises(ConfigError, match="reload"):
        load_settings({"reload": "sometimes"}, environ={})
    settings = Settings(middleware="m", event_handlers="e", bundles=str(tmp_path), reload=True)
    assert watched_folders(settings) == [Path("m").absolute(), Path("e").absolute(), tmp_path]


def test_bare_reload_flag_on_the_command_line():
    from tykworker.cli.commands import _parser

    args = _parser().parse_args(["serve", "--reload", "--workers", "2"])
    assert load_settings(vars(args), environ={}).reload is True
    args = _parser().parse_args(["serve", "--reload", "false"])
    assert load_settings(vars(args), environ={}).reload is False
