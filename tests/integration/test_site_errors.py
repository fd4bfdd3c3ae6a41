"""A site whose data fails preflight reports the error to the server; the job ends cleanly, no hang."""

import shutil

import nibabel as nib
import numpy as np
import pytest

from fedsegnet.flare.ops.jobs import SimResults, SimulatorRun, configure_job

from .conftest import JOBS, TINY_JOB_ARGS

pytestmark = pytest.mark.slow


def test_bad_site_data_reported_to_server(tiny_sites, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_sites, data)
    # site-2: one label gets a class the dataset does not declare
    label_path = sorted((data / "site-2" / "labelsTr").glob("*.nii.gz"))[0]
    img = nib.load(label_path)
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), label_path)

    job = configure_job(JOBS / "fedavg", tmp_path / "job", **{**TINY_JOB_ARGS, "num_rounds": 1})
    ws = tmp_path / "ws"
    with SimulatorRun(job, ws, n_clients=2, threads=2, data_root=data) as run:
        # no hang: wait() raises if the job is still running after 300 s. With min_clients=2 the server
        # cannot go on with one site, so FLARE ends the job (simulator exit code 2).
        run.wait(timeout=300)
    res = SimResults(ws)
    server_log = res.server_log.read_text()
    assert "site-2 reported an error" in server_log, server_log[-3000:]
    assert label_path.name in server_log and "7" in server_log
    # the site with bad data never contributed
    for record in res.read_records():
        assert "site-2" not in record["sites"]
