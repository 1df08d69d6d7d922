"""Why a transaction or request was refused: a fixed set of codes, one message each time."""


class Rejected(Exception):
    """A transaction refused by the mempool or the ledger; ``code`` is a stable label."""

    CODES = (
        "malformed",
        "bad_signature",
        "wrong_chain",
        "stale_nonce",
        "nonce_gap",
        "insufficient_funds",
        "fee_too_low",
        "duplicate",
        "mempool_full",
        "sender_limit",
        "expired",
        "activation_fee",
        "already_active",
        "unknown_node",
        "wrong_epoch",
        "heartbeat_done",
        "not_owner",
        "nothing_to_claim",
    )

    def __init__(self, code: str, message: str):
        assert code in self.CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
