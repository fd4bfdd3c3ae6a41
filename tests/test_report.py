"""The report's count of missed rounds (fedsegnet.report.missed_rounds), on records old and new."""

from fedsegnet.report import MISSED_ROUNDS_NAMED, missed_rounds, missing_sites, series


def _record(rnd, missing):
    return {"round": rnd, "sites": {}, "missing_sites": missing}


def test_a_site_that_missed_more_than_two_rounds_is_named_with_how_many_of_how_many():
    late, failed = {"reason": "late", "detail": "..."}, {"reason": "failed", "detail": "preflight"}
    records = [_record(0, {"site-3": late, "site-2": failed}), _record(1, {"site-3": late}), _record(2, {}),
               _record(3, {"site-3": failed, "site-2": failed}), _record(4, {"site-3": late})]  # fmt: skip
    out = missed_rounds(records)
    assert MISSED_ROUNDS_NAMED == 2 and list(out) == ["site-3"]  # site-2 missed 2: not more than 2
    assert out["site-3"]["text"] == "site-3 missed 4 of 5 rounds (failed 1, late 3)"
    assert out["site-3"]["missed"] == 4 and out["site-3"]["rounds"] == 5
    assert list(missed_rounds(records, more_than=1)) == ["site-2", "site-3"]
    assert series(records)["missed_rounds"] == out


def test_records_written_before_the_reasons_count_too():
    old = [_record(r, ["site-2"]) for r in range(3)]
    assert missing_sites(old[0]) == {"site-2": {"reason": None, "detail": "no update"}}
    assert missed_rounds(old)["site-2"]["text"] == "site-2 missed 3 of 3 rounds (no update 3)"
    assert missed_rounds([{"round": 0, "sites": {}}]) == {}
