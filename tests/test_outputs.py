"""fedsegnet.outputs: a destination is created and marked, an existing one refused, only a marked one
replaced (and only with overwrite), protected inputs never written."""

import json

import pytest

from fedsegnet.errors import FedSegNetError, OutputError
from fedsegnet.outputs import MARKER, check_protected, claim_dir, claim_file, read_marker


def _unrelated(tmp_path):
    folder = tmp_path / "unrelated"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    return folder


def test_a_new_folder_is_created_and_marked(tmp_path):
    out = claim_dir(tmp_path / "a" / "b", "data synth")
    assert out.is_dir() and read_marker(out)["command"] == "data synth"
    assert json.loads((out / MARKER).read_text())["command"] == "data synth"


def test_an_empty_folder_is_taken(tmp_path):
    (tmp_path / "empty").mkdir()
    assert read_marker(claim_dir(tmp_path / "empty", "report"))["command"] == "report"


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_unrelated_folder_is_refused_and_kept(tmp_path, overwrite):
    folder = _unrelated(tmp_path)
    with pytest.raises(OutputError, match="unrelated"):
        claim_dir(folder, "job", overwrite=overwrite)
    assert (folder / "notes.txt").read_text() == "keep me" and not (folder / MARKER).exists()


def test_a_marked_folder_needs_overwrite_and_the_same_command(tmp_path):
    out = claim_dir(tmp_path / "out", "data synth")
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="--overwrite"):
        claim_dir(out, "data synth")
    with pytest.raises(OutputError, match="fedsegnet data synth"):
        claim_dir(out, "report", overwrite=True)
    assert (out / "old.txt").exists()
    claim_dir(out, "data synth", overwrite=True)
    assert not (out / "old.txt").exists() and read_marker(out)["command"] == "data synth"


def test_a_file_is_refused_as_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        claim_dir(tmp_path / "f", "job", overwrite=True)
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize("rel", [".", "..", "../.."])
def test_the_source_and_folders_holding_it_are_refused_even_with_overwrite(tmp_path, rel):
    src = tmp_path / "jobs" / "fedavg"
    src.mkdir(parents=True)
    (src / "meta.json").write_text("{}")
    dest = (src / rel).resolve()
    with pytest.raises(OutputError, match="input"):
        claim_dir(dest, "job", overwrite=True, protect=[src])
    assert (src / "meta.json").read_text() == "{}"


def test_inside_the_source_is_refused_for_a_copy_only(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(OutputError, match="inside"):
        check_protected(src / "copy", [src], inside_ok=False)
    check_protected(src / "report", [src])  # no error: writing a new folder inside an input is fine


def test_marker_in_a_subfolder_and_kept_entries(tmp_path):
    ws = tmp_path / "ws"
    (ws / "local").mkdir(parents=True)
    claim_dir(ws, "job simulate", keep=("local",), marker_dir="local")
    assert read_marker(ws, "local")["command"] == "job simulate" and read_marker(ws) is None


def test_claim_file(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"scan")
    with pytest.raises(OutputError, match="input"):
        claim_file(scan, overwrite=True, owned=lambda p: True, protect=[scan])
    other = tmp_path / "other.nii.gz"
    other.write_bytes(b"theirs")
    with pytest.raises(OutputError, match="exists"):
        claim_file(other)
    with pytest.raises(OutputError, match="not written by fedsegnet"):
        claim_file(other, overwrite=True, owned=lambda p: False)
    assert claim_file(other, overwrite=True, owned=lambda p: True) == other
    assert other.read_bytes() == b"theirs"  # claiming writes nothing
    assert claim_file(tmp_path / "new" / "seg.nii.gz").parent.is_dir()


def test_an_uncreatable_destination_is_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot be created"):
        claim_dir(tmp_path / "file" / "sub", "report")
    with pytest.raises(OutputError, match="cannot be created"):
        claim_file(tmp_path / "file" / "seg.nii.gz")
    assert issubclass(OutputError, FedSegNetError)


def test_a_finished_folder_is_replaced_only_while_it_holds_nothing_else(tmp_path):
    """seal_dir lists what the command wrote; a file added later keeps the folder from being replaced."""
    from fedsegnet.outputs import seal_dir

    out = claim_dir(tmp_path / "out", "report")
    (out / "fig.png").write_bytes(b"png")
    (out / "sub").mkdir()
    (out / "sub" / "page.html").write_text("<html>")
    seal_dir(out)
    assert read_marker(out)["files"] == ["fig.png", "sub/page.html"]
    (out / "sub" / "my_notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds 1 file\(s\) `fedsegnet report` did not write \(first: sub/my_notes.txt\)"):
        claim_dir(out, "report", overwrite=True)
    assert (out / "sub" / "my_notes.txt").read_text() == "mine" and (out / "fig.png").exists()
    (out / "sub" / "my_notes.txt").unlink()
    claim_dir(out, "report", overwrite=True)  # nothing but its own files: replaced
    assert not (out / "fig.png").exists() and read_marker(out)["command"] == "report"


def test_a_folder_of_a_command_that_failed_midway_is_replaced_whole(tmp_path):
    out = claim_dir(tmp_path / "out", "data synth")
    (out / "site-1").mkdir()
    (out / "site-1" / "partial.nii.gz").write_bytes(b"x")  # never sealed: the command did not finish
    claim_dir(out, "data synth", overwrite=True)
    assert not (out / "site-1").exists()
