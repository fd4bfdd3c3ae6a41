"""The Recipes build the same jobs as jobs/fedavg and jobs/fedsegnet: same components, filters, classes and arguments."""

import importlib
import inspect
import json
import re

import pytest

from fedsegnet.flare.recipe import FedSegNetFedAvgRecipe, FedSegNetRecipe

from ..integration.conftest import JOBS

_VAR = re.compile(r"^\{(\w+)\}$")


def _resolve(value, variables):
    if isinstance(value, str) and _VAR.match(value):
        return variables[_VAR.match(value).group(1)]
    if isinstance(value, dict):
        return {k: _resolve(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, variables) for v in value]
    return value


def _with_defaults(path, args):
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    full = {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k != "self" and p.default is not inspect.Parameter.empty
    }
    full.update(args)
    # FLARE stores some None defaults as their empty value (e.g. aggregation_weights or {}): same meaning
    return {k: (None if v in ({}, []) else v) for k, v in full.items()}


def _components(config: dict) -> dict:
    variables = {k: v for k, v in config.items() if not isinstance(v, (list, dict)) or k in ("patch_size", "personal_keys")}
    out = {}
    for section in ("workflows", "components"):
        for c in config.get(section, []):
            out[c["id"]] = (c["path"], _with_defaults(c["path"], _resolve(c.get("args", {}), variables)))
    for e in config.get("executors", []):
        ex = e["executor"]
        key = "executor for " + ",".join(sorted(e["tasks"]))
        out[key] = (ex["path"], _with_defaults(ex["path"], _resolve(ex.get("args", {}), variables)))
    for section in ("task_data_filters", "task_result_filters"):
        for chain in config.get(section, []):
            key = f"{section} for " + ",".join(sorted(chain["tasks"]))
            out[key] = [(f["path"], _with_defaults(f["path"], _resolve(f.get("args", {}), variables))) for f in chain["filters"]]
    return out


RECIPES = {"fedavg": FedSegNetFedAvgRecipe, "fedsegnet": FedSegNetRecipe}


@pytest.fixture(scope="module", params=sorted(RECIPES))
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    RECIPES[request.param]().export(str(out))
    return out / request.param


@pytest.mark.parametrize("side", ["server", "client"])
def test_recipe_matches_job_folder(exported, side):
    ours = json.loads((JOBS / exported.name / "app" / "config" / f"config_fed_{side}.json").read_text())
    found = list(exported.rglob(f"config_fed_{side}.json"))
    assert len(found) == 1, f"expected one exported {side} config, found {found}"
    theirs = json.loads(found[0].read_text())
    a, b = _components(ours), _components(theirs)
    assert a.keys() == b.keys()
    for cid in a:
        assert a[cid] == b[cid], f"component {cid!r} differs:\n job folder: {a[cid]}\n recipe:     {b[cid]}"


def test_recipe_job_carries_no_code(exported):
    assert not list(exported.rglob("custom")), "the recipe copied code into the job; sites use the installed package"
