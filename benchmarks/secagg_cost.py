"""What secure aggregation costs a site, next to the plain compressed mode (in one run).

The update has the shapes of the ``cpu`` preset's hybrid Transformer U-Net (in_channels 1, 3
classes: 415,635 values in 78 tensors), seeded ``N(0, 1) * 0.01`` values; site ``i`` of a round
sends that update times its own factor ``1 + 0.1 g_i`` (``g_i ~ N(0, 1)``; unweighted: bytes and CPU
do not depend on the values' scale). Measured:

- plain compressed payload: :class:`~fedsegnet.compression.SparseQuantCodec` at the job default
  (``ratio=0.1, bits=4``) ``encode`` of that update (seeded sampling and rounding, so the figures
  repeat), :func:`~fedsegnet.compression.payload_nbytes`
  (values, positions, scales, table); plus the simple estimate ``10% values x 4 bits + positions``;
- the round plans (:mod:`fedsegnet.secagg.plan`) as the secure-aggregation job builds them
  (``up_ratio=0.1``, ``up_bits=4``, ``compression_block=256``, ``compression_scope="tensor"``, round
  seed ``b"secagg_cost"``): round 0 ``next_plan(0, ...)`` (random blocks, 16-bit values, range 1.0);
  round 1 ``next_plan(1, ..., mean_log_rms=...)`` from the block scores of one site's round-0 encoding
  (``RoundPlan.decode(ring, 1)[1]``), at 4-bit values and, as a variant, at 8-bit values;
- secure aggregation: for ``n`` = 2, 8 and 32 sites (32 in this process only), a full in-process round
  of :mod:`fedsegnet.secagg` (``ServerSecAgg`` and ``n`` ``SiteSecAgg``, threshold ``n // 2 + 1``, no
  drop-outs) for each plan: round 0, then the round-1 plans, each site's ring input from its
  :class:`~fedsegnet.secagg.SecAggErrorFeedback` (``encode(update, plan, rng)``; the round-1 inputs
  start from the residuals the sites kept in round 0). Per row: the plan's ring bits, support values,
  block scores (per block one ring element, two at 4-bit values, sent after the values), and for site 1 the bytes it
  sends (key advert, sealed shares, masked input, unmasking shares) and receives (roster, its inbox,
  the unmask request), each message's ``nbytes()`` (payload fields; a serializer adds its own
  framing to every mode alike), and the plan's JSON (``RoundPlan.to_dict``, which the masked-input
  task also brings down; not in the protocol bytes); the ratio of the bytes up to the plain payload;
  CPU seconds (``time.process_time``, one thread) per site of ``share_keys`` and of
  ``SecAggErrorFeedback.encode`` + ``masked_input``, and of the server's ``result()`` (unmasking) +
  ``RoundPlan.decode``;
- one dense reference row (cheap, kept for scale): 8 sites, round 1, every value (``up_ratio=1``) at
  ``up_bits=32``, which a 32-bit ring holds as 29-bit values at 8 sites: the uplink without compression
  (the job uses a 32-bit ring only when ``up_bits=32``);
- CPU seconds (``time.process_time``, one thread) of masking a 1,000,000-value vector in a 32-bit ring
  at a site of 8 (1 self mask + 7 pairwise), and of the PRG alone (MB/s);
- signed key adverts (:mod:`fedsegnet.secagg.adverts`) at 4, 8 and 32 sites: keys made as ``nvflare
  provision`` makes them (RSA 2048, subject CN + O, a DNS name, issued by the project's root CA; the
  PEM size is printed), steps 0 and 1 of a round unsigned, signed with the certificate in every
  advert, and signed with certificates sent once per job (only fingerprints per round): bytes of the
  advert, the roster and a site's protocol messages, CPU of signing and of ``share_keys`` (which
  checks every other site's advert).

    python benchmarks/secagg_cost.py
    python benchmarks/secagg_cost.py --json secagg_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "custom"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedsegnet.compression import SparseQuantCodec, payload_nbytes, seeded_generator  # noqa: E402
from fedsegnet.secagg import SecAggErrorFeedback, ServerSecAgg, SiteSecAgg, flatten, next_plan, ring_bits_needed  # noqa: E402
from fedsegnet.secagg.masking import MAX_RING_BITS, expand, mask_input  # noqa: E402
from fedsegnet.ledger.signing import Signer  # noqa: E402


def model_update(seed: int) -> dict[str, torch.Tensor]:
    from fedsegnet.networks import build_network

    net = build_network(
        "hybrid_unetr", in_channels=1, out_channels=3, patch_size=(32, 32, 32),
        channels=(16, 32, 64), num_heads=4, num_layers=2, seed=seed,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in net.state_dict().items() if v.is_floating_point()}


def plain_payload(update, seed: int) -> dict:
    payload, _ = SparseQuantCodec(ratio=0.1, bits=4).encode(update, None, generator=seeded_generator(seed, "plain"))
    table = np.asarray(payload["table"])
    return {
        "payload_bytes": payload_nbytes(payload),
        "values_bytes": int(table[:, 6].sum()),
        "index_bytes": int(table[:, 5].sum()),
        "values_sent": int(table[:, 2].sum()),
    }


ROUND_SEED = b"secagg_cost"
"""The public round seed of the plans' random blocks (the job id in a FLARE job)."""


def site_updates(update: dict[str, torch.Tensor], n: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """``{site: update x (1 + 0.1 g)}`` (float32 arrays) for ``site-1`` .. ``site-n``, one factor per site."""
    gen = np.random.default_rng([seed, n])
    base = {k: v.numpy() for k, v in update.items()}
    return {f"site-{i}": {k: v * np.float32(1 + 0.1 * gen.standard_normal()) for k, v in base.items()} for i in range(1, n + 1)}


def fitting_value_bits(value_bits: int, n_sites: int) -> int:
    """``value_bits``, or fewer where ``n_sites`` sums would not fit a 32-bit ring (as the workflow lowers ``up_bits``)."""
    while value_bits > 2 and ring_bits_needed(value_bits, n_sites) > MAX_RING_BITS:
        value_bits -= 1
    return value_bits


def secagg_round(label: str, plan, updates: dict, feedback: dict, seed: int) -> dict:
    """One round of ``plan`` for the sites of ``updates`` (``{site: SecAggErrorFeedback}`` in ``feedback``, updated):
    bytes of site-1 and CPU per site and of the server."""
    names = sorted(updates, key=lambda s: int(s.split("-")[1]))
    n = len(names)
    server = ServerSecAgg(plan.round, names, n // 2 + 1, plan.ring_bits, plan.length)
    sites = {s: SiteSecAgg(s, plan.round) for s in names}
    up = {s: {} for s in names}
    down = {s: {} for s in names}
    for s in names:
        m = sites[s].advertise()
        up[s]["advert"] = m.nbytes()
        server.receive_advert(m)
    roster = server.roster()
    t0 = time.process_time()
    for s in names:
        down[s]["roster"] = roster.nbytes()
        m = sites[s].share_keys(roster)
        up[s]["shares"] = m.nbytes()
        server.receive_shares(m)
    share_cpu = (time.process_time() - t0) / n
    inboxes = server.inboxes()
    encode_cpu = mask_cpu = 0.0
    for i, s in enumerate(names):
        rng = np.random.default_rng([seed, plan.round, i])
        down[s]["inbox"] = inboxes[s].nbytes()
        t0 = time.process_time()
        ring = feedback[s].encode(updates[s], plan, rng)
        t1 = time.process_time()
        m = sites[s].masked_input(inboxes[s], ring)
        mask_cpu += time.process_time() - t1
        encode_cpu += t1 - t0
        up[s]["masked"] = m.nbytes()
        server.receive_masked_input(m)
    request = server.unmask_request()
    for s in names:
        down[s]["request"] = request.nbytes()
        m = sites[s].unmask(request)
        up[s]["unmask"] = m.nbytes()
        server.receive_unmask_reply(m)
    t0 = time.process_time()
    result = server.result()
    t1 = time.process_time()
    _, mean_log_rms = plan.decode(result.ring_sum, len(result.survivors))
    t2 = time.process_time()
    assert result.survivors == sorted(names) and np.isfinite(mean_log_rms).all()
    site = up["site-1"]
    return {
        "round": label, "n": n, "value_bits": plan.value_bits, "ring_bits": plan.ring_bits, "levels": plan.levels,
        "support_values": int(plan.support.size), "support_blocks": int(plan.blocks.size), "block_scores": plan.n_blocks,
        "length": plan.length, "plan_json_bytes": len(json.dumps(plan.to_dict())),
        "up": site, "up_total": sum(site.values()), "up_protocol": sum(v for k, v in site.items() if k != "masked"),
        "down": down["site-1"], "down_total": sum(down["site-1"].values()),
        "site_share_cpu_s": share_cpu, "site_encode_cpu_s": encode_cpu / n, "site_mask_cpu_s": mask_cpu / n,
        "site_encode_mask_cpu_s": (encode_cpu + mask_cpu) / n,
        "server_unmask_cpu_s": t1 - t0, "server_decode_cpu_s": t2 - t1, "server_unmask_decode_cpu_s": t2 - t0,
    }  # fmt: skip


def secagg_rows(update: dict[str, torch.Tensor], layout, mean_log_rms: np.ndarray, n: int, seed: int) -> list[dict]:
    """Round 0, then round 1 at 4- and at 8-bit values (each from the residuals of round 0), for ``n`` sites;
    plus the dense 32-bit reference at 8 sites."""
    updates = site_updates(update, n, seed)
    feedback = {s: SecAggErrorFeedback(s) for s in updates}
    plan0 = next_plan(0, layout, n, ROUND_SEED, ratio=0.1, value_bits=4, block=256)
    rows = [secagg_round("0 (random)", plan0, updates, feedback, seed)]
    after_0 = {s: ef.state_dict() for s, ef in feedback.items()}
    variants = [("1 (scored)", 0.1, 4), ("1 (scored)", 0.1, 8)] + ([("1 dense ref", 1.0, fitting_value_bits(32, n))] if n == 8 else [])
    for label, ratio, bits in variants:
        plan = next_plan(1, layout, n, ROUND_SEED, ratio=ratio, value_bits=bits, block=256, mean_log_rms=mean_log_rms)
        fb = {s: SecAggErrorFeedback(s) for s in updates}
        for s, state in after_0.items():
            fb[s].load_state_dict(state)
        rows.append(secagg_round(label, plan, updates, fb, seed))
    return rows


def masking_cpu(length: int = 1_000_000, peers: int = 7) -> dict:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**32, length, dtype=np.uint64).astype(np.uint32)
    seeds = {f"peer-{i}": os.urandom(32) for i in range(peers)}
    t0 = time.process_time()
    expand(os.urandom(32), length)
    prg = time.process_time() - t0
    t0 = time.process_time()
    mask_input(values, os.urandom(32), seeds, "site-0", 32)
    mask = time.process_time() - t0
    return {"length": length, "peers": peers, "prg_cpu_s": prg, "prg_MB_per_s": 4 * length / 1e6 / max(prg, 1e-9), "mask_cpu_s": mask}


def kit_like_signers(names, project: str = "fedsegnet") -> tuple[dict, object]:
    """Signers shaped like ``nvflare provision``'s: RSA 2048 keys, CN + O + a DNS name, issued by a root CA."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, project)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=360))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=False).sign(ca_key, hashes.SHA256()))  # fmt: skip
    signers = {}
    for i, name in enumerate(names):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"org_{i + 1}")])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=360))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False).sign(ca_key, hashes.SHA256()))  # fmt: skip
        signers[name] = Signer(name, key, cert)
    return signers, ca


def advert_cost(n: int, mode: str, signers: dict, ca) -> dict:
    """Steps 0 and 1 of a round of ``n`` sites (``mode``: unsigned | per round | once per job): bytes and CPU of site-1."""
    names = [f"site-{i}" for i in range(1, n + 1)]
    signed = mode != "unsigned"
    certs = {s: signers[s].cert for s in names} if mode == "once per job" else None
    kw = dict(session="job-0123", signer=None, root_ca=ca, require_signed=True, certs=certs, send_cert=mode == "per round")
    server = ServerSecAgg(1, names, n // 2 + 1, 7, 1, **({"session": "job-0123", "root_ca": ca, "certs": certs} if signed else {}))
    sites = {s: SiteSecAgg(s, 1, **({**kw, "signer": signers[s]} if signed else {})) for s in names}
    t0 = time.process_time()
    adverts = {s: sites[s].advertise() for s in names}
    sign_cpu = (time.process_time() - t0) / n
    for m in adverts.values():
        server.receive_advert(m)
    roster = server.roster()
    t0 = time.process_time()
    bundles = {s: sites[s].share_keys(roster) for s in names}
    share_cpu = (time.process_time() - t0) / n
    assert sites["site-1"].key_check == ("kit" if signed else "unsigned")
    return {"n": n, "mode": mode, "advert": adverts["site-1"].nbytes(), "roster": roster.nbytes(),
            "shares": bundles["site-1"].nbytes(), "sign_cpu_s": sign_cpu, "share_keys_cpu_s": share_cpu}  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    update = model_update(args.seed)
    flat, layout = flatten(update)
    numel = flat.size
    plain = plain_payload(update, args.seed)
    size = int(round(0.1 * numel))
    estimate = size * 4 / 8 + plain["index_bytes"]
    # round 1 is planned from site 1's round-0 block scores (a round of one site: its scores are the mean);
    # a plan's blocks do not depend on the number of sites, so one round-0 encoding serves every n
    plan0 = next_plan(0, layout, 1, ROUND_SEED, ratio=0.1, value_bits=4, block=256)
    ring0, _ = plan0.encode(flatten(site_updates(update, 1, args.seed)["site-1"])[0], np.random.default_rng([args.seed, 0, 0]))
    mean_log_rms = plan0.decode(ring0, 1)[1]
    plan1 = next_plan(1, layout, 1, ROUND_SEED, ratio=0.1, value_bits=4, block=256, mean_log_rms=mean_log_rms)
    print(f"model: {numel:,} values in {len(update)} tensors, {plan0.n_blocks:,} blocks of <= 256 values")
    for name, plan in (("round 0 plan", plan0), ("round 1 plan", plan1)):
        print(f"{name}: {plan.support.size:,} values ({plan.support.size / numel:.1%}) in {plan.blocks.size} blocks, "
              f"{plan.value_bits}-bit values, ranges {plan.clips.min():.3g}..{plan.clips.max():.3g}, "
              f"+ {plan.n_blocks:,} block scores")  # fmt: skip
    print(f"plain compressed (ratio 0.1, 4 bits): payload {plain['payload_bytes']:,} B "
          f"(values {plain['values_bytes']:,} B, positions {plain['index_bytes']:,} B); "
          f"estimate 10% x 4 bits + positions = {estimate:,.0f} B")  # fmt: skip
    rows = []
    for n in (2, 8, 32):
        t0 = time.perf_counter()
        rows += secagg_rows(update, layout, mean_log_rms, n, args.seed)
        print(f"  {n} sites: {time.perf_counter() - t0:.1f} s wall (every round of this n, in one process)")
    print()
    print("secure aggregation, bytes of site-1 and CPU per site (protocol B up = advert + shares + unmask; "
          "down = roster + inbox + unmask request; plan B = the plan's JSON, brought down with the masked-input task)")  # fmt: skip
    print("| round | sites | value bits | ring bits | support values | block scores | masked input B | protocol B up | up B/site | "
          "vs plain payload | down B/site (protocol) | plan B | site share s | site encode+mask s | server unmask+decode s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['round']} | {r['n']} | {r['value_bits']} | {r['ring_bits']} | {r['support_values']:,} | {r['block_scores']:,} | "
              f"{r['up']['masked']:,} | {r['up_protocol']:,} | {r['up_total']:,} | {r['up_total'] / plain['payload_bytes']:.2f}x | "
              f"{r['down_total']:,} | {r['plan_json_bytes']:,} | {r['site_share_cpu_s']:.4f} | {r['site_encode_mask_cpu_s']:.4f} | "
              f"{r['server_unmask_decode_cpu_s']:.4f} |")  # fmt: skip
    cost = masking_cpu()
    signers, ca = kit_like_signers([f"site-{i}" for i in range(1, 33)])
    pem = len(signers["site-1"].cert_pem)
    keys = [advert_cost(n, mode, signers, ca) for n in (4, 8, 32) for mode in ("unsigned", "per round", "once per job")]
    print()
    print(f"key adverts, kit-like keys (RSA 2048 under a root CA; a site certificate is {pem:,} B of PEM): bytes of site-1, CPU per site")
    print("| sites | adverts | advert B up | roster B down | sign s | share_keys s (checks n-1 adverts) |")
    print("|---:|---|---:|---:|---:|---:|")
    for k in keys:
        print(f"| {k['n']} | {k['mode']} | {k['advert']:,} | {k['roster']:,} | {k['sign_cpu_s']:.4f} | {k['share_keys_cpu_s']:.4f} |")
    print()
    print(f"masking 1,000,000 values in a 32-bit ring at a site of 8 (1 self + 7 pairwise masks): {cost['mask_cpu_s']:.3f} CPU s; "
          f"PRG alone {cost['prg_cpu_s']:.4f} CPU s per 1M uint32 ({cost['prg_MB_per_s']:,.0f} MB/s)")  # fmt: skip
    print()
    print("goal (issue 21): uplink <= 1.5x the plain compressed mode")
    for r in rows:
        ratio = r["up_total"] / plain["payload_bytes"]
        print(f"  round {r['round']}, n={r['n']}, {r['value_bits']}-bit values in a {r['ring_bits']}-bit ring: {ratio:.2f}x -> "
              f"{'meets' if ratio <= 1.5 else 'misses'} the byte goal")  # fmt: skip
    if args.json:
        plans = {"round0": plan0.summary(), "round1": plan1.summary()}
        Path(args.json).write_text(json.dumps({"numel": numel, "tensors": len(update), "plain": plain, "plain_estimate": estimate,
                                               "round_seed": ROUND_SEED.decode(), "plans": plans, "secagg": rows,
                                               "masking": cost, "cert_pem_bytes": pem, "adverts": keys}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
