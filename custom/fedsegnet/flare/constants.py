"""Names shared by the FLARE adapters: DXO meta keys, events, headers, environment variables."""

DATA_ROOT_ENV = "FEDSEGNET_DATA_ROOT"
"""Environment variable a site sets to the folder holding its data (``<root>/<site name>/dataset.json``)."""

ERROR_HEADER = "fedsegnet.error"
"""Shareable header carrying a site's error message in an error reply."""

ROUND_RECORDS_FILE = "fedsegnet_rounds.jsonl"
"""Per-round JSON records (one line per round) in the server's job workspace."""


class UpdateMeta:
    """DXO meta keys of a site's update."""

    N_TRAIN = "fedsegnet.n_train"
    LOCAL_STEPS = "fedsegnet.local_steps"
    LABEL_KIND = "fedsegnet.label_kind"
    TRAIN_LOSS = "fedsegnet.train_loss"
    VAL_DICE_GLOBAL = "fedsegnet.val_dice_global"
    VAL_DICE_LOCAL = "fedsegnet.val_dice_local"
    TRAIN_SECONDS = "fedsegnet.train_seconds"

    ALL = (N_TRAIN, LOCAL_STEPS, LABEL_KIND, TRAIN_LOSS, VAL_DICE_GLOBAL, VAL_DICE_LOCAL, TRAIN_SECONDS)
