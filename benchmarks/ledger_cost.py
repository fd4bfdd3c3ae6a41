"""Cost of the ledger per round: bytes on disk and seconds on the server and at a site.

A job of ``--sites`` sites (default 4) and ``--rounds`` rounds (default 20) writes its ledger as the
FLARE wiring will: per round every site checks the bundle of the last head and signs it
(:meth:`SiteWitness.witness`), the server appends a realistic round entry (each site's payload hash,
update meta, AAM weight and signals, epsilon, its witness record; codec and aggregation settings)
and signs the tree head. Keys are RSA 2048 like FLARE's kits (generated here, self-signed).

Printed: bytes per round in ``entries.jsonl`` and ``heads.jsonl``; seconds per round for the
server's append + sign and for building one site's bundle; seconds for one site's witness; seconds
for :func:`verify` of the whole ledger per round; and the server's share of a ``--round-seconds``
round (default 10 s, a demo round). ``--json PATH`` writes the same figures.

``--run WS`` measures a real run instead (a simulator workspace, e.g. the demo's
``<workdir>/workspace``, or a downloaded job result with its logs): the bytes of its ledger's round
entries and heads, the server time the job's ``LedgerKeeper`` logged per round (bundles, witness
checks, entry, signature: ``ledger round R: ... X ms``), each site's logged check + countersign
and payload-hash times, and their share of the run's own round times (the records' ``seconds``).

    python benchmarks/ledger_cost.py [--sites 4] [--rounds 20] [--json out.json]
    python benchmarks/ledger_cost.py --run /tmp/demo/workspace [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "custom"))

from fedsegnet.ledger import (  # noqa: E402
    Ledger,
    SiteWitness,
    generate_signer,
    job_end_entry,
    job_start_entry,
    round_entry,
    verify,
)


def _site_record(site: str, r: int, k: int) -> dict:
    return {
        "payload_sha256": hashlib.sha256(f"{site}/{r}".encode()).hexdigest(),
        "bytes_up": 1_234_567,
        "weight": 1 / k,
        "epsilon": 0.25 * (r + 1),
        "meta": {"n_train": 40, "label_kind": "voxel", "val_dice": 0.8123, "train_loss": 0.3456, "local_steps": 50},
        "signals": {"quality": 0.97, "performance": 0.81, "divergence": 0.12, "norm": 3.21},
    }


SERVER_LINE = re.compile(r"ledger round (\d+): entry (\d+) \(([\d,]+) bytes\).*?([\d.]+) ms of server time")
SITE_LINE = re.compile(r"identity=([^,\]]+).*ledger head of size (\d+) checked and countersigned in ([\d.]+) ms")
PAYLOAD_LINE = re.compile(r"identity=([^,\]]+).*ledger: payload of round (\d+) hashed and recorded in ([\d.]+) ms")


def measure_run(run: Path) -> dict:
    """What a real run's ledger cost: bytes, logged server and site times, against its round times."""
    (marker,) = sorted(run.rglob("LEDGER.json"))[:1] or [None]
    if marker is None:
        raise SystemExit(f"{run}: no ledger below it")
    folder = marker.parent
    lines = (folder / "entries.jsonl").read_bytes().splitlines(keepends=True)
    rounds = [json.loads(line) for line in lines if json.loads(line)["kind"] == "round"]
    entry_bytes = [len(line) for line in lines if json.loads(line)["kind"] == "round"]  # as stored
    head_bytes = [len(line) for line in (folder / "heads.jsonl").read_bytes().splitlines(keepends=True)]
    records = [json.loads(line) for line in (folder.parent / "fedsegnet_rounds.jsonl").read_text().splitlines()]
    server_ms, site_ms, payload_ms = {}, {}, {}
    for log in sorted(run.rglob("log.txt")):
        for line in log.read_text(errors="replace").splitlines():
            if m := SERVER_LINE.search(line):
                server_ms[int(m.group(1))] = float(m.group(4))
            elif m := SITE_LINE.search(line):
                site_ms.setdefault(m.group(1), []).append(float(m.group(3)))
            elif m := PAYLOAD_LINE.search(line):
                payload_ms.setdefault(m.group(1), []).append(float(m.group(3)))
    if not server_ms:
        raise SystemExit(f"{run}: no 'ledger round R: ... ms of server time' lines in its log.txt files")
    round_s = {r["round"]: r["seconds"] for r in records if r.get("seconds")}
    shares = [server_ms[r] / 1e3 / round_s[r] for r in server_ms if r in round_s]
    # a site's check (before training) and its payload hash (after) are on the round's critical path
    site_max = [max(v) + max(payload_ms.get(s, [0.0])) for s, v in site_ms.items()] if site_ms else [0.0]
    figures = {
        "run": run.name,  # no machine paths in the results
        "sites": sorted(site_ms),
        "rounds": len(rounds),
        "entry_bytes_per_round": statistics.mean(entry_bytes),
        "head_bytes_per_round": statistics.mean(head_bytes),
        "bytes_per_round": statistics.mean(entry_bytes) + statistics.mean(head_bytes),
        "server_ms_per_round_median": statistics.median(server_ms.values()),
        "server_ms_per_round_max": max(server_ms.values()),
        "site_witness_ms_median": statistics.median([x for v in site_ms.values() for x in v]) if site_ms else None,
        "site_witness_ms_max": max(max(v) for v in site_ms.values()) if site_ms else None,
        "site_payload_hash_ms_median": statistics.median([x for v in payload_ms.values() for x in v]) if payload_ms else None,
        "site_ms_per_round_max": max(site_max),
        "round_seconds_median": statistics.median(round_s.values()),
        "server_share_of_round_median": statistics.median(shares),
        "server_share_of_round_max": max(shares),
        # a site's check happens before its training, on the round's critical path
        "server_plus_site_share_of_round_max": max(
            (server_ms[r] + max(site_max)) / 1e3 / round_s[r] for r in server_ms if r in round_s
        ),
    }
    print(f"ledger cost of the run {run}: {len(rounds)} rounds, sites {', '.join(figures['sites'])}")
    print(f"  bytes per round        {figures['bytes_per_round']:8.0f}  (round entry {figures['entry_bytes_per_round']:.0f}, head {figures['head_bytes_per_round']:.0f})")
    print(f"  server, logged         {figures['server_ms_per_round_median']:8.2f} ms per round (median; max {figures['server_ms_per_round_max']:.2f})")
    print(f"  site check + sign      {figures['site_witness_ms_median']:8.2f} ms per task (median; max {figures['site_witness_ms_max']:.2f})")
    if figures["site_payload_hash_ms_median"] is not None:
        print(f"  site payload hash      {figures['site_payload_hash_ms_median']:8.2f} ms per update (median)")
    print(f"  round (records)        {figures['round_seconds_median']:8.2f} s (median)")
    print(f"  share of a round       server {100 * figures['server_share_of_round_median']:.3f}% (median; max "
          f"{100 * figures['server_share_of_round_max']:.3f}%), server + slowest site (check, hash) at most "
          f"{100 * figures['server_plus_site_share_of_round_max']:.3f}%")
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--round-seconds", type=float, default=10.0, help="length of a demo round, for the share")
    parser.add_argument("--run", type=Path, default=None, help="measure this real run (simulator workspace or job result) instead")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.run is not None:
        figures = measure_run(args.run)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return figures
    names = [f"site-{i + 1}" for i in range(args.sites)]
    server = generate_signer("server", key_type="rsa")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        witnesses = {s: SiteWitness(tmp / s, generate_signer(s, key_type="rsa"), "server") for s in names}
        ledger = Ledger.create(tmp / "fedsegnet_ledger", "bench")
        ledger.append(job_start_entry(job_id="bench", job_config_sha256="0" * 64, code_version="0.1.0",
                                      participants=names, server="server"))
        ledger.sign_head(server)
        server_s, bundle_s, witness_s, entry_bytes, head_bytes = [], [], [], [], []
        before = hashlib.sha256(b"global 0").hexdigest()
        for r in range(args.rounds):
            records = {}
            for s in names:
                t0 = time.perf_counter()
                bundle = ledger.witness_bundle(s)
                t1 = time.perf_counter()
                records[s] = witnesses[s].witness(bundle)
                t2 = time.perf_counter()
                bundle_s.append(t1 - t0)
                witness_s.append(t2 - t1)
                ledger.add_cert(witnesses[s].signer.cert)
                witnesses[s].record_payload(r, _site_record(s, r, args.sites)["payload_sha256"])
            after = hashlib.sha256(f"global {r + 1}".encode()).hexdigest()
            e0 = (ledger.folder / "entries.jsonl").stat().st_size
            h0 = (ledger.folder / "heads.jsonl").stat().st_size
            t0 = time.perf_counter()
            ledger.append(round_entry(
                r, global_before=before, global_after=after,
                sites={s: _site_record(s, r, args.sites) for s in names},
                aggregation={"method": "aam", "gate": {"max_norm": 100.0}, "temperature": 1.0},
                codec={"name": "sparse_quant", "density": 0.1, "bits": 4}, witnesses=records))
            ledger.sign_head(server)
            server_s.append(time.perf_counter() - t0)
            entry_bytes.append((ledger.folder / "entries.jsonl").stat().st_size - e0)
            head_bytes.append((ledger.folder / "heads.jsonl").stat().st_size - h0)
            before = after
        ledger.append(job_end_entry(last_round=args.rounds - 1, reason="finished"))
        ledger.sign_head(server)
        t0 = time.perf_counter()
        result = verify(ledger.folder)
        verify_s = time.perf_counter() - t0
        assert result.ok, result.lines()
    per_round_server = statistics.median(server_s) + args.sites * statistics.median(bundle_s)
    figures = {
        "sites": args.sites,
        "rounds": args.rounds,
        "entry_bytes_per_round": statistics.mean(entry_bytes),
        "head_bytes_per_round": statistics.mean(head_bytes),
        "bytes_per_round": statistics.mean(entry_bytes) + statistics.mean(head_bytes),
        "server_append_sign_s": statistics.median(server_s),
        "server_bundle_s_per_site": statistics.median(bundle_s),
        "site_witness_s": statistics.median(witness_s),
        "verify_s_per_round": verify_s / args.rounds,
        "server_share_of_round": per_round_server / args.round_seconds,
    }
    print(f"ledger cost, {args.sites} sites, {args.rounds} rounds (RSA 2048 keys)")
    print(f"  bytes per round        {figures['bytes_per_round']:8.0f}  (entries {figures['entry_bytes_per_round']:.0f}, heads {figures['head_bytes_per_round']:.0f})")
    print(f"  server append + sign   {figures['server_append_sign_s'] * 1e3:8.2f} ms per round (median)")
    print(f"  server bundle          {figures['server_bundle_s_per_site'] * 1e3:8.2f} ms per site and round")
    print(f"  site witness           {figures['site_witness_s'] * 1e3:8.2f} ms per round (check + sign)")
    print(f"  verify                 {figures['verify_s_per_round'] * 1e3:8.2f} ms per round")
    print(f"  server share of a {args.round_seconds:g} s round: {figures['server_share_of_round'] * 100:.3f}%")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
