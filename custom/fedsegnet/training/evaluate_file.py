"""Evaluation of a saved model file, what ``fedsegnet eval`` runs.

A global model (or one site's personalised version of it, :mod:`fedsegnet.training.personal`) is
read as untrusted input (:func:`~fedsegnet.training.spec.load_model_file`) and scored on a
``dataset.json`` folder after the folder's data passed preflight.
"""

from __future__ import annotations

from pathlib import Path

from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.preflight import preflight
from fedsegnet.data.transforms import build_eval_dataset
from fedsegnet.errors import DataError
from fedsegnet.training.evaluate import EvalResult, evaluate
from fedsegnet.training.personal import apply_personal_state
from fedsegnet.training.site import eval_cases, model_fit_problems, pick_device, site_label_map
from fedsegnet.training.spec import load_model_file, preset_from_spec

__all__ = ["evaluate_model_file"]


def evaluate_model_file(
    model_path: str | Path,
    data_dir: str | Path,
    *,
    split: str | None = None,
    device: str | None = None,
    progress: bool = False,
    personal: str | Path | None = None,
) -> tuple[EvalResult, dict]:
    """Evaluate a saved global model (or one site's personalised version of it) on a ``dataset.json`` folder.

    Args:
        model_path: FLARE's saved ``.pt`` (with the FedSegNet model spec).
        data_dir: folder with ``dataset.json``.
        split: which list to evaluate. Defaults to None: ``test`` if it has labelled cases, else
            ``validation``, else ``training``.
        device: torch device. Defaults to None (CUDA when available).
        progress: tqdm bar. Defaults to False.
        personal: a site's personal state file (``fedsegnet_personal/<site>.pt``) to lay over the
            global model (:func:`~fedsegnet.training.personal.apply_personal_state`). Defaults to None.

    Returns:
        ``(result, spec)``; with ``personal`` the spec gains ``"personal"`` (the state's summary).

    Raises:
        FedSegNetError: unreadable model, data that fails preflight, or a model/data mismatch in
            channels or classes (named).
    """
    model, spec = load_model_file(model_path)
    if personal is not None:
        spec = {**spec, "personal": apply_personal_state(model, personal)}
    datalist = load_datalist(data_dir)
    if split is None:
        split = next((s for s in ("test", "validation", "training") if getattr(datalist, s)), "test")
    cases = list(getattr(datalist, split))
    problems = []
    if not cases:
        problems.append(f"{Path(data_dir) / 'dataset.json'}: split {split!r} has no labelled cases")
    problems += model_fit_problems(datalist, spec["num_classes"], spec["in_channels"], f"the model {model_path}")
    preset = preset_from_spec(spec)
    label_map = None
    try:
        label_map = site_label_map(datalist, preset)
    except DataError as e:
        problems += e.problems
    if problems:
        raise DataError(datalist.name or str(data_dir), problems)
    preflight(datalist, check_splits=(split,))
    dev = pick_device(device)
    result = evaluate(
        model.to(dev),
        eval_cases(cases, build_eval_dataset(cases, preset, label_map=label_map)),
        num_classes=datalist.num_classes,
        roi_size=preset.patch_size,
        sw_batch_size=preset.sw_batch_size,
        overlap=preset.sw_overlap,
        device=dev,
        amp=preset.amp,
        class_names=label_map.class_names,
        regions=label_map.regions,
        progress=progress,
    )
    return result, spec
