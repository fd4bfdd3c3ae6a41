"""A site under a dataset preset: BraTS folders -> split -> training with the 4->3 label mapping ->
evaluation with BraTS's regions; a site whose data do not fit the preset is refused by name."""

import json

import pytest

from fedsegnet.config import build_train_config
from fedsegnet.data.split import read_dataset, split_cases, write_split
from fedsegnet.errors import ConfigError, DataError
from fedsegnet.training.site import SiteTrainer

from ..data.test_split import make_brats, make_msd


def _brats_config(**kw):
    return build_train_config(preset="brats", network="hybrid_unetr", patch_size=16, spacing=1.0, batch_size=2,
                              local_steps=2, amp=False, num_workers=0, **kw)  # fmt: skip


def test_brats_site_trains_and_scores_regions(tmp_path):
    source = read_dataset(make_brats(tmp_path / "brats", n=4, size=20))
    assignment, test = split_cases(source.cases, sites=1, test_fraction=0.25, val_fraction=0.34, seed=0)
    write_split(source, assignment, test, tmp_path / "out")
    trainer = SiteTrainer(tmp_path / "out" / "site-1", _brats_config(), site="site-1", device="cpu")
    assert trainer.label_map.source_values == (0, 1, 2, 4) and trainer.label_map.class_ids == (0, 1, 2, 3)
    assert trainer.in_channels == 4 and trainer.num_classes == 4
    batch = next(trainer._train_batches())
    assert batch["image"].shape[1] == 4 and set(batch["label"].unique().tolist()) <= {0, 1, 2, 3}
    update, stats = trainer.train_round(trainer.get_weights())
    assert stats["steps"] == 2
    result = trainer.evaluate().to_dict()
    assert set(result["per_class"]) == {"necrotic_core", "edema", "enhancing"}
    assert set(result["per_region"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}
    assert json.dumps(result)  # plain JSON, no NaN objects


def test_a_site_that_does_not_fit_the_preset_is_named(tmp_path):
    liver = make_msd(tmp_path / "liver", n=2)  # 1 CT channel, liver/cancer
    with pytest.raises(DataError) as err:
        SiteTrainer(liver, _brats_config(), site="site-3", device="cpu", run_preflight=False)
    text = str(err.value)
    assert "site-3" in text and str(liver / "dataset.json") in text
    assert "field 'modality' declares 1 channel(s) but the job's model (preset 'brats') takes in_channels=4" in text
    assert "value 1 ('liver') matches none of preset 'brats'" in text
    with pytest.raises(ConfigError, match="preset 'brats' fixes num_classes=4"):
        SiteTrainer(liver, _brats_config(), num_classes=3, device="cpu", run_preflight=False)
