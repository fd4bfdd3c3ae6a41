"""Names shared by the FLARE adapters: DXO meta keys, events, headers, environment variables."""

DATA_ROOT_ENV = "FEDSEGNET_DATA_ROOT"
"""Environment variable a site sets to the folder holding its data (``<root>/<site name>/dataset.json``)."""

ERROR_HEADER = "fedsegnet.error"
"""Shareable header carrying a site's error message in an error reply."""

ROUND_RECORDS_FILE = "fedsegnet_rounds.jsonl"
"""Per-round JSON records (one line per round) in the server's job workspace."""

PERSONAL_DIR = "fedsegnet_personal"
"""Folder in a site's job workspace holding its personal state ``<site>.pt`` (personalisation)."""

CHOICE_DIR = "fedsegnet_choice"
"""Folder in a site's job workspace holding the model the site keeps (``fedsegnet.training.choice``)."""

PRIVACY_DIR = "fedsegnet_privacy"
"""Folder in a site's job workspace holding its privacy state ``<site>.json`` (the DP accountant)."""

DP_REFUSED_HEADER = "fedsegnet.dp_refused"
"""Header of a site's error reply to a train task: True when the round would pass its ``dp_budget``."""


class UpdateMeta:
    """DXO meta keys of a site's update."""

    N_TRAIN = "fedsegnet.n_train"
    LOCAL_STEPS = "fedsegnet.local_steps"
    LABEL_KIND = "fedsegnet.label_kind"
    TRAIN_LOSS = "fedsegnet.train_loss"
    VAL_DICE_GLOBAL = "fedsegnet.val_dice_global"
    VAL_DICE_LOCAL = "fedsegnet.val_dice_local"
    LABEL_AGREEMENT = "fedsegnet.label_agreement"
    TRAIN_SECONDS = "fedsegnet.train_seconds"
    ROUND = "fedsegnet.round"
    UPDATE_NORM = "fedsegnet.update_norm"
    RESIDUAL_NORM = "fedsegnet.residual_norm"
    SENT_VALUES = "fedsegnet.sent_values"
    RSS_MB = "fedsegnet.rss_mb"
    """Resident memory (MiB) of the site's job process when the update was made."""
    PARENT_RSS_MB = "fedsegnet.parent_rss_mb"
    """Resident memory (MiB) of the site's parent process (the FLARE client that started the job)."""
    PERSONAL_KEYS = "fedsegnet.personal_keys"
    """Names (never values) of the parameters the site keeps to itself; the update leaves them out."""
    DP = "fedsegnet.dp"
    """With ``dp='patient'``: the site's privacy report after the round (``epsilon``, ``delta``,
    ``noise_multiplier``, ``sample_rate``, ``clip``, ``steps``, ``budget``)."""

    ALL = (
        N_TRAIN, LOCAL_STEPS, LABEL_KIND, TRAIN_LOSS, VAL_DICE_GLOBAL, VAL_DICE_LOCAL, LABEL_AGREEMENT, TRAIN_SECONDS,
        UPDATE_NORM, RESIDUAL_NORM, SENT_VALUES, RSS_MB, PARENT_RSS_MB, PERSONAL_KEYS, DP,
    )  # fmt: skip


class CodecMeta:
    """DXO meta keys and headers of the compression filters (``fedsegnet.flare.compression``)."""

    ENCODED = "fedsegnet.encoded"
    """Update meta: the DXO data is a FedSegNet payload (set by the site's encoder)."""
    DOWNLINK = "fedsegnet.downlink"
    """Task meta: ``{"mode": "full" | "diff", "base": version or None, "version": version}``."""
    GLOBAL_VERSION_HEADER = "fedsegnet.global_version"
    """Result header: the version of the global model the site holds after decoding this task's data."""
    GLOBAL_VERSION_PROP = "fedsegnet.global_version"
    """Client FLContext prop (private, not sticky): set by the downlink decoder, read by the encoder."""


MESSAGE_BYTES_EVENT = "fedsegnet.message_bytes"
"""Server event fired by ``MessageBytes`` per measured message; props in :class:`BytesProp`."""


class BytesProp:
    SITE = "fedsegnet.bytes.site"
    DIRECTION = "fedsegnet.bytes.direction"
    ROUND = "fedsegnet.bytes.round"
    NBYTES = "fedsegnet.bytes.nbytes"


AAM_RECORD_EVENT = "fedsegnet.aam_record"
"""Server event fired by ``AAMAggregator`` after each aggregation; the record is in :data:`AAM_RECORD_PROP`."""
AAM_RECORD_PROP = "fedsegnet.aam_record"
"""FLContext prop: ``{"round", "method", "sites": {site: {gate, signals, weight, ...}}}``."""
ROUND_RECORD_EVENT = "fedsegnet.round_record"
"""Server event fired by ``RoundRecorder`` once a round's record is written; the record is in :data:`ROUND_RECORD_PROP`."""
ROUND_RECORD_PROP = "fedsegnet.round_record"
"""FLContext prop: the round's record, as written to ``fedsegnet_rounds.jsonl``."""
AAM_STATE_KEY = "fedsegnet_aam"
"""Key of the AAM state in the ``train_conf`` of the saved global model."""


SECURE_AGGREGATION = "secure_aggregation"
"""``aggregation_method`` of a secure-aggregation round's records (the server saw only the sum)."""


class SecAggTask:
    """Task names of a secure-aggregation round (``fedsegnet.flare.secagg_workflow``), one per exchange."""

    ADVERT = "secagg_advert"
    """Step 0: the site answers with its ``KeyAdvert`` and its number of training cases."""
    SHARES = "secagg_shares"
    """Step 1: carries the ``Roster``; the site answers with its ``ShareBundle``."""
    MASKED = "secagg_masked"
    """Step 2: carries the global model, the site's ``ShareInbox``, its weight, the ring and the layout;
    the site trains and answers with its ``MaskedInput``."""
    UNMASK = "secagg_unmask"
    """Step 3: carries the ``UnmaskRequest``; the site answers with its ``UnmaskReply``."""
    ALL = (ADVERT, SHARES, MASKED, UNMASK)


SECAGG_KEY = "fedsegnet.secagg"
"""Shareable key of a secure-aggregation task's or reply's payload (messages as ``to_dict()``: str, int, bytes)."""
SECAGG_DIR = "fedsegnet_secagg"
"""Folder in a job workspace for secure aggregation's files: the server's ``rounds.jsonl`` (and, with
``keep_masked_inputs``, what it received); a site's own inputs with ``keep_inputs`` (tests only)."""
