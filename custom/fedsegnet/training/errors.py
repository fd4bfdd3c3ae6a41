"""Errors raised by local training, weight exchange and evaluation."""

from __future__ import annotations

from fedsegnet.errors import FedSegNetError

__all__ = ["TrainingError", "WeightsError"]


class TrainingError(FedSegNetError, RuntimeError):
    """Local training or evaluation cannot go on (non-finite loss, bad batch, bad case).

    Args:
        message: what went wrong, naming the step, batch key or case.
        step: 1-based optimiser step at fault, when there is one.
    """

    def __init__(self, message: str, step: int | None = None):
        self.step = step
        super().__init__(message)


class WeightsError(FedSegNetError, ValueError):
    """Exchanged weights do not fit the model.

    Args:
        missing: model keys absent from the weights.
        unexpected: weight keys the model does not have.
        mismatched: ``(key, weights_shape, model_shape)`` for each shape mismatch.
        bad_values: ``(key, type_name)`` for values that are neither tensors nor arrays.
        shown: how many names of each kind the message lists.
    """

    def __init__(
        self,
        missing: list[str] = (),
        unexpected: list[str] = (),
        mismatched: list[tuple[str, tuple, tuple]] = (),
        bad_values: list[tuple[str, str]] = (),
        shown: int = 5,
    ):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.bad_values = list(bad_values)

        def first(items, fmt=str):
            more = f", ... ({len(items) - shown} more)" if len(items) > shown else ""
            return ", ".join(fmt(i) for i in items[:shown]) + more

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {first(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {first(self.unexpected)}")
        if self.mismatched:
            parts.append(
                f"{len(self.mismatched)} shape mismatch(es): "
                + first(self.mismatched, lambda m: f"{m[0]} (weights {tuple(m[1])}, model {tuple(m[2])})")
            )
        if self.bad_values:
            parts.append(
                f"{len(self.bad_values)} value(s) not a tensor or array: "
                + first(self.bad_values, lambda b: f"{b[0]} ({b[1]})")
            )
        super().__init__("weights do not fit the model: " + "; ".join(parts))
