"""``fedsegnet ledger verify | show``: check and read a job's ledger (``fedsegnet_ledger/``).

    fedsegnet ledger verify RUN [--kits DIR] [--final F] [--best B] [--no-witnesses]
    fedsegnet ledger show RUN

``RUN`` is the ledger folder itself, a server job folder holding ``fedsegnet_ledger/`` (a simulator
workspace's ``server/simulate_job``, a POC server's ``<job id>``), or any folder with exactly one
ledger below it (a simulator workspace, a downloaded job result). ``verify`` prints one line per
entry and exits 0 when everything holds, else 1 naming the first entry at fault (data problems,
e.g. no ledger, exit 3; several ledgers below RUN, exit 2). The final and best model files next to the ledger (``app_server/``) are
checked against the ledger's ``job_end`` entry unless other files are given.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedsegnet.errors import FedSegNetError, UsageError

MARKER = "LEDGER.json"


def register(sub) -> None:
    """Add the ``ledger`` command and its sub-commands.

    Args:
        sub: the top-level sub-parsers (``add_subparsers()`` of the ``fedsegnet`` parser).
    """
    led = sub.add_parser("ledger", help="verify or show a job's tamper-evident ledger").add_subparsers(
        dest="ledger_command", required=True
    )
    pv = led.add_parser("verify", help="recompute the tree, check every signature, proof and model file; exit 1 naming the first entry at fault")
    pv.add_argument("run", help="the ledger folder, a server job folder, or a folder with one ledger below it")
    pv.add_argument("--kits", help="the provisioned project's startup kits (e.g. <poc>/<project>/prod_00): certificates and root CA")
    pv.add_argument("--final", help="the final global model file to check (default: app_server/FL_global_model.pt next to the ledger)")
    pv.add_argument("--best", help="the best global model file to check (default: app_server/best_FL_global_model.pt)")
    pv.add_argument("--no-witnesses", action="store_true", help="do not require every accepted site's signature of the head")
    pv.set_defaults(func=_cmd_verify)
    ps = led.add_parser("show", help="the history, one line per entry")
    ps.add_argument("run", help="the ledger folder, a server job folder, or a folder with one ledger below it")
    ps.set_defaults(func=_cmd_show)


def find_ledger(run: str | Path) -> Path:
    """The ledger folder ``run`` names (see the module docstring).

    Raises:
        FedSegNetError: naming ``run`` when it is missing or holds no ledger (exit 3).
        UsageError: ``run`` holds more than one ledger (listing them; exit 2).
    """
    run = Path(run)
    if not run.exists():
        raise FedSegNetError(f"{run}: no such file or folder")
    if (run / MARKER).is_file():
        return run
    if (run / "fedsegnet_ledger" / MARKER).is_file():
        return run / "fedsegnet_ledger"
    found = sorted(p.parent for p in run.rglob(MARKER))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FedSegNetError(f"{run}: no ledger here (no {MARKER} in it or below it); a job writes one to <job folder>/fedsegnet_ledger")
    raise UsageError(f"{run}: {len(found)} ledgers below it, name one: " + ", ".join(str(p) for p in found))


def _models(folder: Path, final: str | None, best: str | None) -> dict[str, Path]:
    app = folder.parent / "app_server"
    models = {}
    for name, given, default in (("final", final, "FL_global_model.pt"), ("best", best, "best_FL_global_model.pt")):
        path = Path(given) if given else app / default
        if given and not path.is_file():
            raise FedSegNetError(f"--{name} {path}: no such file")
        if path.is_file():
            models[name] = path
    return models


def _cmd_verify(args) -> int:
    from fedsegnet.ledger import verify

    folder = find_ledger(args.run)
    kits = Path(args.kits) if args.kits else None
    if kits is not None and not kits.is_dir():
        raise FedSegNetError(f"--kits {kits}: no such folder")
    models = _models(folder, args.final, args.best)
    result = verify(folder, certs=kits, models=models, require_witnesses=not args.no_witnesses)
    for line in result.lines():
        print(line)
    if models:
        print("model files checked: " + ", ".join(f"{k} {v}" for k, v in models.items()))
    return result.exit_code


def _cmd_show(args) -> int:
    from fedsegnet.ledger import Ledger

    folder = find_ledger(args.run)
    ledger = Ledger.open(folder)
    heads = {h["size"]: h for h in ledger.heads}
    print(f"ledger {folder}: log {ledger.log_id}, {ledger.size} entries, {len(heads)} signed heads")
    for e in ledger.entries:
        print(entry_line(e, heads.get(e["index"] + 1)))
    return 0


def entry_line(entry: dict, head: dict | None = None) -> str:
    """One readable line of an entry (and of the head signed right after it, if any)."""
    kind = entry.get("kind")
    at = f"{entry.get('index'):>3} {entry.get('time', '')[:19]}"
    if kind == "job_start":
        text = f"job_start  job {entry.get('job_id')}, sites {', '.join(entry.get('participants') or [])}, server {entry.get('server')}, config sha256 {entry.get('job_config_sha256', '')[:12]}"
    elif kind == "round":
        sites = entry.get("sites") or {}
        accepted = ", ".join(f"{s} w={_fmt(r.get('weight'))}" + (f" eps={_fmt(r.get('epsilon'))}" if r.get("epsilon") is not None else "")
                             for s, r in sorted(sites.items()))  # fmt: skip
        refused = "; ".join(f"{s}: {r.get('reason')}" for s, r in sorted((entry.get("refused") or {}).items()))
        text = (f"round {entry.get('round'):<4} global {entry.get('global_before', '')[:12]} -> {entry.get('global_after', '')[:12]}; "
                f"accepted {accepted or 'none'}" + (f"; refused {refused}" if refused else "")
                + f"; witnessed by {', '.join(sorted(entry.get('witnesses') or {})) or 'none'}")  # fmt: skip
    elif kind == "resume":
        prev = entry.get("previous_head") or {}
        text = f"resume     continues {entry.get('previous_folder')} from its head of size {prev.get('size')} (round {prev.get('round')})"
    elif kind == "job_end":
        models = ", ".join(f"{k} {v.get('file')} sha256 {str(v.get('sha256'))[:12]}" for k, v in sorted((entry.get("models") or {}).items()))
        text = f"job_end    after round {entry.get('last_round')}: {entry.get('reason')}; {models or 'no model files'}"
    else:
        text = json.dumps(entry)[:200]
    if head is not None:
        text += f"  [head {head['size']} signed by {head.get('signer')} ({head.get('key_source')})]"
    return f"{at}  {text}"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"
