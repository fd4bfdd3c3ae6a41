"""Fixtures of the ledger tests: a tiny PKI laid out like FLARE startup kits, and a federation that
writes a ledger with witnessing sites (no FLARE)."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fedsegnet.ledger import Ledger, Signer, SiteWitness, hash_weights, job_end_entry, job_start_entry, round_entry

SITES = ("site-1", "site-2", "site-3")
SERVER = "localhost"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(cn: str, key, issuer_cn: str, issuer_key, ca: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def write_kits(root: Path, project: str, names=(SERVER, *SITES)) -> Path:
    """``<root>/<name>/startup/{server,client}.{crt,key}, rootCA.pem`` for each participant."""
    ca_key = _key()
    ca = _cert(project, ca_key, project, ca_key, ca=True)
    for name in names:
        key = _key()
        cert = _cert(name, key, project, ca_key)
        stem = "server" if name == SERVER else "client"
        startup = root / name / "startup"
        startup.mkdir(parents=True)
        (startup / f"{stem}.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
        )
        (startup / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (startup / "rootCA.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return root


@pytest.fixture(scope="session")
def kits(tmp_path_factory) -> Path:
    """Startup kits of project ``ledgertest`` (read-only)."""
    return write_kits(tmp_path_factory.mktemp("kits"), "ledgertest")


@pytest.fixture(scope="session")
def other_kits(tmp_path_factory) -> Path:
    """Kits of another project (another root CA), same participant names."""
    return write_kits(tmp_path_factory.mktemp("other_kits"), "otherproject")


def signer(kits: Path, name: str) -> Signer:
    return Signer.from_kit(kits / name / "startup")


def root_ca(kits: Path) -> Path:
    return kits / SERVER / "startup" / "rootCA.pem"


@dataclass
class Run:
    ledger: Ledger
    witnesses: dict
    models: dict
    globals: list


def payload_hash(site: str, rnd: int) -> str:
    return hashlib.sha256(f"{site} payload {rnd}".encode()).hexdigest()


def federate(ledger_dir: Path, site_dir: Path, kits: Path, rounds: int = 3, sites=SITES, ledger: Ledger | None = None,
             witnesses: dict | None = None, start_round: int = 0, end: bool = True) -> Run:
    """What the FLARE wiring will do: job start, ``rounds`` rounds with every site witnessing, job end."""
    server = signer(kits, SERVER)
    ca = root_ca(kits)
    if ledger is None:
        ledger = Ledger.create(ledger_dir, "job-1")
        ledger.append(job_start_entry(job_id="job-1", job_config_sha256="0" * 64, code_version="0.1.0",
                                      participants=list(sites), server=SERVER))
        ledger.sign_head(server)
    if witnesses is None:
        witnesses = {s: SiteWitness(site_dir / s, signer(kits, s), SERVER, root_ca=ca) for s in sites}
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal(4).astype(np.float32)}
    globals_ = [hash_weights(weights)]
    prev_after = next((e["global_after"] for e in reversed(ledger.entries) if e["kind"] == "round"), globals_[0])
    for r in range(start_round, start_round + rounds):
        records, accepted = {}, {}
        for s in sites:
            records[s] = witnesses[s].witness(ledger.witness_bundle(s))
            ledger.add_cert(witnesses[s].signer.cert)
            accepted[s] = {"payload_sha256": payload_hash(s, r), "meta": {"n_train": 10, "val_dice": 0.5},
                           "weight": 1 / len(sites), "signals": {"quality": 0.9}, "epsilon": 0.1 * (r + 1)}
            witnesses[s].record_payload(r, payload_hash(s, r))
        weights = {"w": weights["w"] + 0.1}
        after = hash_weights(weights)
        ledger.append(round_entry(r, global_before=prev_after, global_after=after, sites=accepted,
                                  aggregation={"method": "aam"}, codec={"topk": 0.1, "bits": 8}, witnesses=records))
        ledger.sign_head(server)
        prev_after = after
        globals_.append(after)
    models = {}
    if end:
        for name in ("final", "best"):
            path = ledger_dir.parent / f"{name}_model.pt"
            path.write_bytes(f"{name} model bytes {prev_after}".encode())
            models[name] = path
        from fedsegnet.ledger import sha256_file

        ledger.append(job_end_entry(last_round=start_round + rounds - 1, reason="finished", models={
            n: {"file": p.name, "sha256": sha256_file(p), "round": start_round + rounds - 1} for n, p in models.items()}))
        ledger.sign_head(server)
    return Run(ledger, witnesses, models, globals_)


@pytest.fixture
def run(tmp_path, kits) -> Run:
    """A finished 3-round job of 3 sites: ledger in ``tmp_path/server/fedsegnet_ledger``."""
    return federate(tmp_path / "server" / "fedsegnet_ledger", tmp_path / "sites", kits)
