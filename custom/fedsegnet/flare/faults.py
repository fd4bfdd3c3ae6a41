"""Fault injection for drills and tests: site filters that break a site's update or slow the site
down, and a server filter that shows a site a rewritten ledger history.

Put :class:`CorruptPayload` after ``UpdateEncoder`` in a site's task-result filters to check, on a
real deployment, that the server rejects a malformed update with a line naming the site and the
reason, that the round goes on with the other sites, and that the global model stays intact. Put
:class:`SlowSite` in a site's task-data filters of the train task to make it a straggler (as a site
whose volumes take longer to load) and check that a round waits for it, or, with
``drop_stragglers``, that the round record and the report name it. Put :class:`RewriteLedgerHistory`
after ``LedgerTaskFilter`` in the server's task-data filters to play a server that rewrites history:
the site it is shown to must refuse the task. Never part of a production job.
"""

from __future__ import annotations

import time

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from fedsegnet.compression import is_payload
from fedsegnet.flare.constants import UpdateMeta


class _SiteRoundFault(Filter):
    """A fault that hits the listed sites in the listed rounds (None: every site, every round)."""

    def __init__(self, sites: list[str] | None = None, rounds: list[int] | None = None):
        super().__init__()
        self.sites = sites
        self.rounds = rounds

    def applies(self, site: str, rnd) -> bool:
        """Whether the fault hits ``site`` in round ``rnd``."""
        return (self.sites is None or site in self.sites) and (self.rounds is None or rnd in self.rounds)


class CorruptPayload(_SiteRoundFault):
    """Break the payload of the listed sites in the listed rounds.

    Args:
        sites: site names that corrupt their update. Defaults to None (every site).
        rounds: rounds in which they do. Defaults to None (every round).
        mode: ``"truncate"`` (drop half of the values), ``"nan"`` (NaN scale), ``"shape"`` (first
            tensor's shape reversed), ``"version"`` (unknown payload version) or ``"index"``
            (positions past the end of a tensor). Defaults to ``"truncate"``.
    """

    MODES = ("truncate", "nan", "shape", "version", "index")

    def __init__(self, sites: list[str] | None = None, rounds: list[int] | None = None, mode: str = "truncate"):
        super().__init__(sites, rounds)
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r}: unknown (valid: {', '.join(self.MODES)})")
        self.mode = mode

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        site = fl_ctx.get_identity_name()
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        dxo = from_shareable(shareable)
        rnd = dxo.get_meta_prop(UpdateMeta.ROUND)
        if not self.applies(site, rnd):
            return shareable
        if not is_payload(dxo.data):
            return shareable
        p = dict(dxo.data)
        if self.mode == "truncate":
            p["values"] = p["values"][: p["values"].size // 2].copy()
        elif self.mode == "nan":
            p["scales"] = p["scales"].copy()
            p["scales"][0] = np.nan
        elif self.mode == "shape":
            p["shapes"] = p["shapes"].copy()
            n = int(p["table"][0, 7])
            p["shapes"][:n] = p["shapes"][:n][::-1].copy()
        elif self.mode == "version":
            p["version"] = 999
        else:
            p["index"] = np.full_like(p["index"], 0x7F)
        self.log_warning(fl_ctx, f"site {site} round {rnd}: payload deliberately corrupted ({self.mode}) for a drill")
        dxo.data = p
        return dxo.update_shareable(shareable)


class SlowSite(_SiteRoundFault):
    """Hold the train task of the listed sites for ``seconds`` before the site starts on it.

    Args:
        sites: site names that are slow. Defaults to None (every site).
        rounds: rounds in which they are. Defaults to None (every round).
        seconds: how long each listed task is held, > 0. Defaults to 10.0.

    Raises:
        ValueError: ``seconds`` is not a positive number.
    """

    def __init__(self, sites: list[str] | None = None, rounds: list[int] | None = None, seconds: float = 10.0):
        super().__init__(sites, rounds)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"seconds={seconds!r}: must be a number > 0")
        self.seconds = seconds

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        site = fl_ctx.get_identity_name()
        rnd = shareable.get_header(AppConstants.CURRENT_ROUND)
        if self.applies(site, rnd):
            self.log_warning(fl_ctx, f"site {site} round {rnd}: held for {self.seconds:g} s for a drill (SlowSite)")
            time.sleep(self.seconds)
        return shareable


class RewriteLedgerHistory(_SiteRoundFault):
    """A dishonest server: show the listed sites, in the listed rounds, a ledger head over a history
    in which one earlier entry was rewritten, signed with the server's own key.

    Put it after ``LedgerTaskFilter`` in the server's task-data filters of ``train``. The site must
    refuse the task (its consistency check against the head it saw before fails), the round goes on
    with the other sites, and the honest ledger still verifies.

    Args:
        sites: the sites shown the rewritten history. Defaults to None (every site).
        rounds: the rounds in which they are. Defaults to None (every round).
        entry: index of the entry rewritten (1: the first round's). Defaults to 1.
        ledger_id: the ``LedgerKeeper`` component. Defaults to ``"ledger"``.
    """

    def __init__(self, sites: list[str] | None = None, rounds: list[int] | None = None, entry: int = 1,
                 ledger_id: str = "ledger"):  # fmt: skip
        super().__init__(sites, rounds)
        self.entry = int(entry)
        self.ledger_id = ledger_id

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        import json

        from fedsegnet.flare.ledger import BUNDLE_HEADER
        from fedsegnet.flare.widgets import _peer_site
        from fedsegnet.ledger import Ledger, MerkleTree, canonical_bytes, leaf_hash
        from fedsegnet.ledger.signing import sign_head

        site = _peer_site(fl_ctx)
        rnd = shareable.get_header(AppConstants.CURRENT_ROUND)
        keeper = fl_ctx.get_engine().get_component(self.ledger_id)
        ledger = getattr(keeper, "ledger", None)
        if not self.applies(site, rnd) or ledger is None or ledger.last_head is None:
            return shareable
        size = ledger.last_head["size"]
        if not 0 <= self.entry < size:
            return shareable
        lines = [ledger.line(i) for i in range(size)]
        forged = json.loads(lines[self.entry])
        for rec in (forged.get("sites") or {}).values():  # what a server would rewrite: who counted how much
            rec["weight"] = 1.0
        forged["time"] = "1970-01-01T00:00:00+00:00"
        lines[self.entry] = canonical_bytes(forged)
        head = sign_head(keeper.signer, size, MerkleTree([leaf_hash(line) for line in lines]).root(), ledger.log_id,
                         ledger.last_head.get("round"))  # fmt: skip
        # the forged history in memory (nothing written), its bundle made as the honest one is
        fork = Ledger(ledger.folder, ledger.log_id, lines, [head])
        bundle = fork.witness_bundle(site, seen_sizes=[h["size"] for h in ledger.heads])
        self.log_warning(fl_ctx, f"round {rnd}: site {site} is shown a ledger whose entry {self.entry} was rewritten (a drill)")
        shareable.set_header(BUNDLE_HEADER, json.dumps(bundle))
        return shareable
