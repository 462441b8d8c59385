"""Files are written whole or not at all, and two writers of one file never share a temporary file."""

import os
import stat
import threading
import time

import pandas as pd
import pytest

from textreg import files


def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json({"score": 1}, path)

    def full_disk(tmp):
        tmp.write_text('{"sco')  # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.atomic_write(path, full_disk)
    assert files.read_json(path) == {"score": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_concurrent_writers_of_one_file_use_their_own_temporaries(tmp_path):
    path, temporaries, barrier = tmp_path / "folds.csv", [], threading.Barrier(4)

    def writer(value: int) -> None:
        def write(tmp):
            temporaries.append(tmp)
            barrier.wait(timeout=10)  # all four temporaries exist at once
            pd.DataFrame({"id": range(1000), "fold": value}).to_csv(tmp, index=False)

        files.atomic_write(path, write)

    threads = [threading.Thread(target=writer, args=(value,)) for value in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(temporaries)) == 4 and all(t.parent == tmp_path for t in temporaries)
    written = pd.read_csv(path)  # one writer's whole file, never a mix
    assert len(written) == 1000 and written["fold"].nunique() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["folds.csv"]


def test_the_temporary_keeps_the_extension(tmp_path):
    seen = []
    files.atomic_write(tmp_path / "plot.png", lambda tmp: seen.append(tmp.suffix) or tmp.write_bytes(b"x"))
    assert seen == [".png"]  # matplotlib picks the format by it


def test_written_files_and_folders_get_the_usual_modes(tmp_path):
    files.write_text("x", tmp_path / "a.txt")  # not mkstemp's owner-only 0600
    files.write_folder_once(tmp_path / "backbone", lambda tmp: (tmp / "config.json").write_text("{}"))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "backbone").stat().st_mode) == 0o777 & ~mask


def test_a_folder_is_written_once_and_whole(tmp_path):
    def broken(tmp):
        (tmp / "tokenizer.json").write_text("{}")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.write_folder_once(tmp_path / "backbone", broken)
    assert list(tmp_path.iterdir()) == []  # no half folder, no temporary
    files.write_folder_once(tmp_path / "backbone", lambda tmp: (tmp / "config.json").write_text("1"))
    files.write_folder_once(tmp_path / "backbone", lambda tmp: (tmp / "config.json").write_text("2"))
    assert (tmp_path / "backbone" / "config.json").read_text() == "1"  # a whole folder is kept as it is
    assert [p.name for p in tmp_path.iterdir()] == ["backbone"]


def test_a_folder_another_process_writes_first_is_kept(tmp_path):
    def racing(tmp):  # another launch of the same run renames its whole copy into place while this one writes
        (tmp / "config.json").write_text("mine")
        (tmp_path / "backbone").mkdir()
        (tmp_path / "backbone" / "config.json").write_text("theirs")

    files.write_folder_once(tmp_path / "backbone", racing)
    assert (tmp_path / "backbone" / "config.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["backbone"]  # this launch's temporary copy is gone


def test_a_folder_lock_lets_one_holder_in_at_a_time(tmp_path):
    events, holding = [], threading.Event()

    def first() -> None:
        with files.folder_lock(tmp_path):
            holding.set()
            time.sleep(0.3)
            events.append("first leaves")

    thread = threading.Thread(target=first)
    thread.start()
    assert holding.wait(timeout=10)
    with files.folder_lock(tmp_path):  # a lock of its own open file: it waits as another process would
        events.append("second enters")
    thread.join()
    assert events == ["first leaves", "second enters"]
