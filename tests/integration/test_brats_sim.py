"""One federation, two BraTS label conventions: site-1 in the BraTS 2021 layout (four sequence files,
labels 1/2/4), site-2 MSD Task01-style (one 4D file, labels 1 edema / 2 non-enhancing / 3 enhancing).
A real `nvflare simulator` run of jobs/fedsegnet with preset=brats; the global model is scored on a
held-out BraTS split per class and per region, and its prediction is written with BraTS's values."""

import json

import nibabel as nib
import numpy as np
import pytest

from fedsegnet.data.split import read_dataset, split_cases, write_split
from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.training.spec import load_model_file
from fedsegnet.training.infer import predict_case
from fedsegnet.training.evaluate_file import evaluate_model_file

from ..data.test_split import make_brats
from .conftest import JOBS, run_two_sites

pytestmark = pytest.mark.slow

SIZE = 20


def _msd_task01_site(brats_root, site_dir):
    """Re-store the BraTS cases the MSD way: one 4D image (FLAIR, T1w, T1gd, T2w) and MSD label values."""
    (site_dir / "imagesTr").mkdir(parents=True)
    (site_dir / "labelsTr").mkdir()
    to_msd = {0: 0, 1: 2, 2: 1, 4: 3}  # necrotic 1 -> non-enhancing 2, edema 2 -> 1, enhancing 4 -> 3
    entries = []
    for case in read_dataset(brats_root).cases:
        stack = np.stack([np.asarray(nib.load(p).dataobj) for p in case.image], axis=-1)
        seg = np.asarray(nib.load(case.label).dataobj)
        name = case.group + ".nii.gz"
        nib.save(nib.Nifti1Image(stack, np.eye(4)), str(site_dir / "imagesTr" / name))
        nib.save(nib.Nifti1Image(np.vectorize(to_msd.get)(seg).astype(np.uint8), np.eye(4)), str(site_dir / "labelsTr" / name))
        entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    spec = {"name": "BrainTumour", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "training": entries[:-1], "validation": entries[-1:]}  # fmt: skip
    (site_dir / "dataset.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def brats_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("brats")
    source = read_dataset(make_brats(work / "BraTS2021", n=6, size=SIZE))
    assignment, test = split_cases(source.cases, sites=1, test_fraction=0.34, val_fraction=0.25, seed=0)
    write_split(source, assignment, test, work / "sites")
    _msd_task01_site(make_brats(work / "other", n=4, size=SIZE), work / "sites" / "site-2")
    job = configure_job(JOBS / "fedsegnet", work / "job", num_rounds=2, min_clients=2, preset="brats",
                        network="hybrid_unetr", patch_size=16, local_steps=4, seed=0, torch_threads=1,
                        num_workers=0, val_max_cases=1)  # fmt: skip
    rc, res, run = run_two_sites(job, work / "ws", work / "sites")
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-3000:]}"
    return work, res


def test_both_conventions_train_one_brats_model(brats_run):
    work, res = brats_run
    records = res.read_records()
    assert [r["round"] for r in records] == [0, 1]
    assert all(sorted(r["sites"]) == ["site-1", "site-2"] for r in records)
    _, spec = load_model_file(res.global_model)
    assert (spec["preset"], spec["in_channels"], spec["num_classes"]) == ("brats", 4, 4)
    cross = res.read_cross_site()
    assert set(cross) == {"site-1", "site-2"}


def test_global_model_scored_per_region_and_written_with_brats_values(brats_run):
    work, res = brats_run
    result, _ = evaluate_model_file(res.global_model, work / "sites" / "test")
    summary = result.to_dict()
    assert set(summary["per_class"]) == {"necrotic_core", "edema", "enhancing"}
    assert set(summary["per_region"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}
    assert all(0.0 <= r["dice"] <= 1.0 for r in summary["per_region"].values())
    model, spec = load_model_file(res.global_model)
    case = json.loads((work / "sites" / "test" / "dataset.json").read_text())["test"][0]
    images = [str((work / "sites" / "test" / p).resolve()) for p in case["image"]]
    labels, _ = predict_case(model, spec, images)
    assert labels.shape == (SIZE,) * 3 and set(np.unique(labels)) <= {0, 1, 2, 4}
