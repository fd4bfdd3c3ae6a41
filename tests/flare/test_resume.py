"""Resume bookkeeping: which residual a resumed site takes, records carried over, clear errors."""

import json
import logging

import numpy as np
import pytest
from nvflare.apis.dxo import from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext

from fedsegnet.errors import FedSegNetError
from fedsegnet.flare.compression import UpdateEncoder
from fedsegnet.flare.resume import check_job_id, copy_records, find_resume_point, pick_residual

from .test_compression_filters import ARGS, _Engine, _result, _update


def _site_ctx(engine, job_id, site="site-1"):
    ctx = FLContext()
    ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.put(ReservedKey.RUN_NUM, job_id, private=True, sticky=False)
    ctx.put(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    return ctx


def _run_rounds(encoder, engine, job_id, rounds):
    return [from_shareable(encoder.process(_result(_update(10 + r), rnd=r), _site_ctx(engine, job_id))).data for r in rounds]


@pytest.mark.parametrize("completed", [2, 3])
def test_resumed_site_continues_from_the_residual_of_the_last_completed_round(tmp_path, completed, caplog):
    engine = _Engine(tmp_path / "site-1")
    _run_rounds(UpdateEncoder(**ARGS), engine, "job-1", [0, 1, 2])  # the site sent round 2; the server died
    run = tmp_path / "site-1" / "job-1"
    assert (run / "fedsegnet_uplink_residual.pt").exists() and (run / "fedsegnet_uplink_residual.prev.pt").exists()

    # reference: an uninterrupted site that sent rounds 0..completed-1, then round `completed`
    reference = UpdateEncoder(**ARGS)
    expected = _run_rounds(reference, _Engine(tmp_path / "ref"), "job-ref", range(completed + 1))[-1]

    resumed = UpdateEncoder(**ARGS, resume_from="job-1")
    with caplog.at_level(logging.INFO):
        got = _run_rounds(resumed, engine, "job-2", [completed])[0]
    assert f"residual of round {completed - 1}" in caplog.text
    np.testing.assert_array_equal(got["index"], expected["index"])
    np.testing.assert_array_equal(got["values"], expected["values"])


def test_resume_without_a_matching_residual_starts_from_zero_and_says_so(tmp_path, caplog):
    engine = _Engine(tmp_path / "site-1")
    _run_rounds(UpdateEncoder(**ARGS), engine, "job-1", [0, 1])
    fresh = _run_rounds(UpdateEncoder(**ARGS), _Engine(tmp_path / "ref"), "job-ref", [5])[0]
    with caplog.at_level(logging.INFO):
        got = _run_rounds(UpdateEncoder(**ARGS, resume_from="job-1"), engine, "job-2", [5])[0]
    assert "no residual saved after round 4" in caplog.text and "round 1" in caplog.text
    np.testing.assert_array_equal(got["values"], fresh["values"])


def test_pick_residual(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert pick_residual([(a, 7), (b, 6)], 7) == (b, f"residual of round 6 from {b}")
    assert pick_residual([(a, 7), (b, 6)], 8)[0] == a
    path, why = pick_residual([(a, None)], 3)
    assert path is None and "starting from zero" in why


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".."])
def test_job_id_is_checked(bad):
    with pytest.raises(FedSegNetError, match="resume_from"):
        check_job_id(bad)


@pytest.mark.parametrize("bad", ["../etc", "a/b"])
def test_encoder_rejects_a_bad_resume_from(bad):
    with pytest.raises(FedSegNetError, match="resume_from"):
        UpdateEncoder(resume_from=bad)
    assert UpdateEncoder(resume_from="").resume_from == ""  # empty = a fresh start


def test_find_resume_point_names_what_is_missing(tmp_path):
    (tmp_path / "other-job").mkdir()
    with pytest.raises(FedSegNetError, match=r"no run folder or archive of that job.*other-job"):
        find_resume_point(tmp_path, "gone-job")
    (tmp_path / "early-job" / "app_server").mkdir(parents=True)
    with pytest.raises(FedSegNetError, match="never finished a round"):
        find_resume_point(tmp_path, "early-job")
    model = tmp_path / "done-job" / "app_server" / "FL_global_model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"x")
    point = find_resume_point(tmp_path, "done-job")
    assert point.model == model and point.records == tmp_path / "done-job" / "fedsegnet_rounds.jsonl"


def test_copy_records_keeps_completed_rounds_and_skips_torn_lines(tmp_path):
    src, dst = tmp_path / "old.jsonl", tmp_path / "new" / "rounds.jsonl"
    src.write_text("\n".join([json.dumps({"round": 0}), json.dumps({"round": 1}), json.dumps({"round": 2}), '{"round": 3, "si']))
    assert copy_records(src, dst, completed=2) == 2
    assert [json.loads(x)["round"] for x in dst.read_text().splitlines()] == [0, 1]
    assert copy_records(tmp_path / "missing.jsonl", dst, completed=5) == 0


def test_find_resume_point_extracts_from_the_job_store(tmp_path, monkeypatch):
    """A job that ended is archived by FLARE (<store>/<id>/workspace, a zip): model and records come out of it."""
    import zipfile

    server = tmp_path / "server"
    store = tmp_path / "jobs-storage"
    (server / "local").mkdir(parents=True)
    (server / "local" / "resources.json").write_text(json.dumps(
        {"components": [{"id": "job_manager", "args": {"uri_root": str(store)}}]}
    ))  # fmt: skip
    (store / "failed-job").mkdir(parents=True)
    with zipfile.ZipFile(store / "failed-job" / "workspace", "w") as z:
        z.writestr("app_server/FL_global_model.pt", b"model")
        z.writestr("fedsegnet_rounds.jsonl", '{"round": 0}\n')
        z.writestr("log.txt", "not needed")
    monkeypatch.delenv("NVFL_JOB_STORE_ROOT", raising=False)
    with pytest.raises(FedSegNetError, match="workspace"):
        find_resume_point(server, "failed-job")  # nowhere to extract to: named, not guessed
    point = find_resume_point(server, "failed-job", extract_to=tmp_path / "new" / "resumed")
    assert point.model.read_bytes() == b"model" and point.records.read_text() == '{"round": 0}\n'
    assert not (tmp_path / "new" / "resumed" / "log.txt").exists()
