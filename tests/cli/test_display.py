"""The demo's per-round lines show Dice, bytes, AAM weights and drops, and site errors."""

from fedsegnet.cli.display import round_lines


def test_round_lines_show_weights_drops_and_errors():
    rec = {
        "round": 2, "val_dice_global": 0.5, "val_dice_local": 0.6, "seconds": 3.0, "bytes_up": 2000, "bytes_down": 4000,
        "sites": {
            "site-1": {"aggregation": {"accepted": True, "weight": 0.7}},
            "site-2": {"aggregation": {"accepted": False, "gate": "w: holds NaN or Inf", "weight": 0.0}},
            "site-3": {"n_train": 4},
        },
        "errors": [{"site": "site-4", "message": "no data"}],
    }  # fmt: skip
    lines = round_lines(rec, 5)
    assert lines[0].startswith("      round 2 (3 of 5): val Dice of the received global model 0.500")
    assert "2 kB up and 4 kB down" in lines[0]
    assert lines[1] == "        AAM weights: site-1 0.70, site-2 dropped (w: holds NaN or Inf)"
    assert lines[2] == "      ERROR from site-4: no data"


def test_round_lines_without_aggregation_record():
    lines = round_lines({"round": 0, "sites": {"site-1": {}}}, 1)
    assert len(lines) == 1 and "n/a" in lines[0] and lines[0].startswith("      round 0 (1 of 1):")


def test_round_lines_show_the_epsilon_each_site_has_spent_and_the_budget():
    rec = {"round": 1, "sites": {"site-1": {"dp": {"epsilon": 1.234, "budget": 8.0}}, "site-2": {"dp": {"epsilon": 2.5, "budget": 8.0}},
                                 "site-3": {"n_train": 4}}}  # fmt: skip
    assert round_lines(rec, 3)[1] == "        epsilon spent: site-1 1.23, site-2 2.50 (budget 8)"
    assert not any("epsilon" in line for line in round_lines({"round": 0, "sites": {"site-1": {}}}, 1))
