"""The server's model under a dataset preset: channels and classes from the preset, the spec carries
classes, regions and written label values; a job arg that contradicts the preset is refused."""

import pytest

from fedsegnet.config import get_preset
from fedsegnet.errors import ConfigError
from fedsegnet.flare.persistor import SegModelPersistor
from fedsegnet.training.spec import class_names_of, preset_from_spec


def test_persistor_takes_channels_and_classes_from_a_dataset_preset():
    spec = SegModelPersistor(preset="brats", network="hybrid_unetr", patch_size=32).spec
    assert (spec["in_channels"], spec["num_classes"]) == (4, 4)
    assert spec["label_values"] == [0, 1, 2, 4] and spec["intensity"] == "zscore_nonzero"
    assert class_names_of(spec) == ["background", "necrotic_core", "edema", "enhancing"]
    assert set(spec["regions"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}
    back = preset_from_spec(spec)
    brats = get_preset("brats")
    assert (back.classes, back.regions, back.label_values) == (brats.classes, brats.regions, brats.label_values)
    assert back.network == "hybrid_unetr" and back.patch_size == (32, 32, 32)


def test_generic_preset_defaults_and_overrides():
    assert (SegModelPersistor(preset="tiny").spec["num_classes"], SegModelPersistor(preset="tiny").spec["in_channels"]) == (3, 1)
    spec = SegModelPersistor(preset="tiny", num_classes=5, in_channels=2).spec
    assert (spec["num_classes"], spec["in_channels"]) == (5, 2) and spec["classes"] == [] and spec["label_values"] == []
    assert class_names_of(spec) == ["background", "class_1", "class_2", "class_3", "class_4"]


@pytest.mark.parametrize("args, field", [({"num_classes": 3}, "num_classes"), ({"in_channels": 1}, "in_channels")])
def test_job_args_contradicting_a_dataset_preset_are_named(args, field):
    with pytest.raises(ConfigError) as err:
        SegModelPersistor(preset="brats", network="hybrid_unetr", patch_size=32, **args)
    assert err.value.field == field and "preset 'brats' fixes" in str(err.value)
