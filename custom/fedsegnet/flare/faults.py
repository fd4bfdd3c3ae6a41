"""Fault injection for drills and tests: a site task-result filter that breaks its own encoded update.

Put :class:`CorruptPayload` after ``UpdateEncoder`` in a site's task-result filters to check, on a
real deployment, that the server rejects a malformed update with a line naming the site and the
reason, that the round goes on with the other sites, and that the global model stays intact.
Never part of a production job.
"""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from fedsegnet.compression import is_payload
from fedsegnet.flare.constants import UpdateMeta


class CorruptPayload(Filter):
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
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r}: unknown (valid: {', '.join(self.MODES)})")
        self.sites = sites
        self.rounds = rounds
        self.mode = mode

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        site = fl_ctx.get_identity_name()
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        dxo = from_shareable(shareable)
        rnd = dxo.get_meta_prop(UpdateMeta.ROUND)
        if (self.sites is not None and site not in self.sites) or (self.rounds is not None and rnd not in self.rounds):
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
