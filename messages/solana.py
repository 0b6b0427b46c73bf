"""Solana wire types: base58, Solana Pay transfer links, and the check that a transaction pays.

Everything here judges input we do not control (a link a wallet produced, a transaction a
public RPC node returned), so parsing refuses with a typed reason and the transaction check
returns a verdict instead of raising: a malformed answer from a node must never grant a plan,
and must never crash the poller either.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, quote

import msgspec

__all__ = [
    "LAMPORTS_PER_SOL",
    "MEMO_PROGRAM_ID",
    "SYSTEM_PROGRAM_ID",
    "Base58Error",
    "PaymentLinkError",
    "TransferRequest",
    "TransferVerdict",
    "b58decode",
    "b58encode",
    "build_transfer_url",
    "format_sol",
    "is_pubkey",
    "new_reference",
    "parse_sol_amount",
    "parse_transfer_url",
    "verify_transfer",
]

LAMPORTS_PER_SOL: Final = 1_000_000_000
SYSTEM_PROGRAM_ID: Final = "11111111111111111111111111111111"
MEMO_PROGRAM_ID: Final = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"
MAX_LAMPORTS: Final = 2**64 - 1
"""Lamport amounts are u64 on chain; anything larger cannot be a real transfer."""

MAX_URL_LENGTH: Final = 4096
_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {ch: i for i, ch in enumerate(_B58_ALPHABET)}
_MAX_B58_INPUT: Final = 256
"""Base58 decoding is quadratic; nothing we decode (keys, signatures) is anywhere near this."""

_AMOUNT_RE: Final = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")
_SINGLE_PARAMS: Final = ("amount", "label", "message", "memo", "spl-token")


class Base58Error(ValueError):
    """Text that is not base58 (or is too long to be a key or signature)."""


class PaymentLinkError(ValueError):
    """A Solana Pay link we refuse; `reason` says why in words a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58, the encoding of Solana keys and signatures."""
    n = int.from_bytes(data, "big")
    out: list[str] = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of `b58encode`; every string has at most one decoding, so no canonical check."""
    if len(text) > _MAX_B58_INPUT:
        raise Base58Error(f"base58 text longer than {_MAX_B58_INPUT} characters")
    n = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            raise Base58Error(f"{ch!r} is not a base58 character")
        n = n * 58 + digit
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + n.to_bytes((n.bit_length() + 7) // 8, "big")


def is_pubkey(text: object) -> bool:
    """True for base58 text that decodes to exactly 32 bytes (a public key or reference)."""
    if not isinstance(text, str) or not 32 <= len(text) <= 44:
        return False
    try:
        return len(b58decode(text)) == 32
    except Base58Error:
        return False


def new_reference() -> str:
    """A fresh Solana Pay reference: 32 random bytes, so it names exactly one order on chain."""
    return b58encode(secrets.token_bytes(32))


def format_sol(lamports: int) -> str:
    """Integer lamports as an exact SOL decimal ("1.5", "0.000000001"), never through a float."""
    if isinstance(lamports, bool) or not isinstance(lamports, int) or lamports < 0:
        raise ValueError("lamports must be a non-negative int")
    whole, frac = divmod(lamports, LAMPORTS_PER_SOL)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:09d}".rstrip("0")


def parse_sol_amount(text: str) -> int:
    """A Solana Pay `amount` (SOL, decimal, at most 9 places) as integer lamports."""
    if text.startswith("-"):
        raise PaymentLinkError("amount is negative")
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        raise PaymentLinkError(f"amount {text[:40]!r} is not a plain decimal number of SOL")
    whole, frac = match.group(1), match.group(2) or ""
    if len(frac) > 9:
        raise PaymentLinkError("amount has more than 9 decimals (finer than one lamport)")
    if len(whole) > 11:
        raise PaymentLinkError("amount is larger than any SOL balance can be")
    lamports = int(whole) * LAMPORTS_PER_SOL + int(frac.ljust(9, "0"))
    if lamports > MAX_LAMPORTS:
        raise PaymentLinkError("amount is larger than any SOL balance can be")
    return lamports


class TransferRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed Solana Pay transfer request (native SOL only)."""

    recipient: str
    amount_lamports: int | None
    references: tuple[str, ...] = ()
    label: str | None = None
    message: str | None = None
    memo: str | None = None

    @property
    def reference(self) -> str | None:
        """The first reference key: the one our own links carry."""
        return self.references[0] if self.references else None


def build_transfer_url(
    recipient: str,
    amount_lamports: int,
    reference: str,
    label: str | None = None,
    message: str | None = None,
    memo: str | None = None,
) -> str:
    """A Solana Pay link ("solana:<recipient>?amount=..&reference=..") for one order.

    Raises `PaymentLinkError` for arguments that would make a link wallets refuse or
    misread: a bad key, a non-positive or out-of-range amount.
    """
    if not is_pubkey(recipient):
        raise PaymentLinkError("recipient is not a base58 public key")
    if not is_pubkey(reference):
        raise PaymentLinkError("reference is not a base58 public key")
    if isinstance(amount_lamports, bool) or not isinstance(amount_lamports, int):
        raise PaymentLinkError("amount must be whole lamports (an int)")
    if not 0 < amount_lamports <= MAX_LAMPORTS:
        raise PaymentLinkError("amount must be positive and fit in a u64")
    params = [("amount", format_sol(amount_lamports)), ("reference", reference)]
    for key, value in (("label", label), ("message", message), ("memo", memo)):
        if value is not None:
            if not isinstance(value, str):
                raise PaymentLinkError(f"{key} is not text")
            params.append((key, value))
    try:
        query = "&".join(f"{key}={quote(value, safe='')}" for key, value in params)
    except UnicodeEncodeError:
        raise PaymentLinkError("label, message or memo is not valid Unicode text") from None
    if len(query) + len(recipient) + 8 > MAX_URL_LENGTH:
        raise PaymentLinkError(f"link would be longer than {MAX_URL_LENGTH} characters")
    return f"solana:{recipient}?{query}"


def parse_transfer_url(url: str) -> TransferRequest:
    """Parse a Solana Pay transfer link; anything malformed raises `PaymentLinkError`."""
    if not isinstance(url, str):
        raise PaymentLinkError("link is not text")
    if len(url) > MAX_URL_LENGTH:
        raise PaymentLinkError(f"link is longer than {MAX_URL_LENGTH} characters")
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.lower() != "solana":
        raise PaymentLinkError("link does not start with solana:")
    if "#" in rest:
        raise PaymentLinkError("link has a #fragment, which Solana Pay does not use")
    recipient, _, query = rest.partition("?")
    if recipient.lower().startswith(("http%3a", "https%3a", "http:", "https:")):
        raise PaymentLinkError("transaction-request links are not supported, only transfers")
    if not is_pubkey(recipient):
        raise PaymentLinkError("recipient is not a base58 public key")
    try:
        pairs = (
            parse_qsl(
                query,
                keep_blank_values=True,
                strict_parsing=True,
                errors="strict",
                max_num_fields=32,
            )
            if query
            else []
        )
    except ValueError as exc:
        raise PaymentLinkError(f"query string is malformed ({type(exc).__name__})") from None
    single: dict[str, str] = {}
    references: list[str] = []
    for key, value in pairs:
        if key == "reference":
            if not is_pubkey(value):
                raise PaymentLinkError("reference is not a base58 public key")
            references.append(value)
        elif key in _SINGLE_PARAMS:
            if key in single:
                raise PaymentLinkError(f"{key} is given more than once")
            single[key] = value
    if "spl-token" in single:
        raise PaymentLinkError("spl-token transfers are not supported, only SOL")
    amount = single.get("amount")
    return TransferRequest(
        recipient=recipient,
        amount_lamports=None if amount is None else parse_sol_amount(amount),
        references=tuple(references),
        label=single.get("label"),
        message=single.get("message"),
        memo=single.get("memo"),
    )


class TransferVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """Whether one transaction pays one order, and why not when it does not.

    `lamports` is what the transaction's system transfers credit to the wallet (when it
    could be read); `flags` name oddities worth an admin's look even on a grant.
    """

    ok: bool
    reason: str
    signature: str | None = None
    lamports: int | None = None
    slot: int | None = None
    block_time: int | None = None
    flags: tuple[str, ...] = ()


class _Refuse(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _int(value: object, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refuse(f"{what} is not an integer")
    if not minimum <= value <= MAX_LAMPORTS:
        raise _Refuse(f"{what} is out of range")
    return value


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Refuse(f"{what} is missing or not an object")
    return value


def _list(value: object, what: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise _Refuse(f"{what} is missing or not a list")
    return value


def _account_keys(message: Mapping[str, Any]) -> tuple[list[str], list[bool]]:
    keys: list[str] = []
    signers: list[bool] = []
    for entry in _list(message.get("accountKeys"), "transaction.message.accountKeys"):
        if isinstance(entry, Mapping):
            pubkey, signer = entry.get("pubkey"), entry.get("signer", False)
        else:
            pubkey, signer = entry, None
        if not isinstance(pubkey, str):
            raise _Refuse("an account key is not a string")
        keys.append(pubkey)
        signers.append(signer is True)
    if not keys:
        raise _Refuse("transaction has no account keys")
    if len(set(keys)) != len(keys):
        raise _Refuse("an account key is listed twice")
    if signers and not any(signers) and isinstance(message["accountKeys"][0], Mapping):
        raise _Refuse("no account key is a signer")
    return keys, signers


def _instructions(message: Mapping[str, Any], meta: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = [
        _mapping(ix, "an instruction")
        for ix in _list(message.get("instructions"), "transaction.message.instructions")
    ]
    inner = meta.get("innerInstructions")
    if inner is not None:
        for group in _list(inner, "meta.innerInstructions"):
            group_map = _mapping(group, "an inner instruction group")
            for ix in _list(group_map.get("instructions"), "inner instructions"):
                found.append(_mapping(ix, "an inner instruction"))
    return found


def _system_flows(instructions: list[Mapping[str, Any]], wallet: str) -> tuple[int, int]:
    """(lamports into the wallet, lamports out of it) by parsed system instructions."""
    credited = debited = 0
    for ix in instructions:
        if ix.get("programId") != SYSTEM_PROGRAM_ID:
            continue
        if ix.get("program", "system") != "system":
            raise _Refuse("system program instruction with a foreign program name")
        parsed = ix.get("parsed")
        if not isinstance(parsed, Mapping):
            accounts = ix.get("accounts")
            if isinstance(accounts, list) and wallet in accounts:
                raise _Refuse("an unparsed system instruction touches the wallet")
            continue
        kind = parsed.get("type")
        info = parsed.get("info")
        if kind not in ("transfer", "transferWithSeed"):
            if isinstance(info, Mapping) and wallet in info.values():
                raise _Refuse(f"a system {kind!r} instruction touches the wallet")
            continue
        info = _mapping(info, "transfer info")
        source, destination = info.get("source"), info.get("destination")
        if not isinstance(source, str) or not isinstance(destination, str):
            raise _Refuse("transfer source or destination is not a string")
        lamports = _int(info.get("lamports"), "transfer lamports")
        if destination == wallet:
            credited += lamports
        if source == wallet:
            debited += lamports
    return credited, debited


def _balance_change(meta: Mapping[str, Any], index: int, count: int) -> int:
    pre = _list(meta.get("preBalances"), "meta.preBalances")
    post = _list(meta.get("postBalances"), "meta.postBalances")
    if len(pre) != count or len(post) != count:
        raise _Refuse("balance lists do not match the account keys")
    return _int(post[index], "post balance") - _int(pre[index], "pre balance")


def verify_transfer(
    tx: Mapping[str, Any] | None,
    *,
    wallet: str,
    expected_lamports: int,
    reference: str,
    confirmation_status: str | None = None,
) -> TransferVerdict:
    """Judge a `getTransaction` (encoding "jsonParsed") result against one order.

    Grants only a successful transaction that names `reference` among its account keys and
    whose parsed system transfers move exactly `expected_lamports` to `wallet`, with the
    wallet's balance change agreeing. When the wallet paid the fee its balance change is
    muddied, so only the instructions count and the verdict carries `wallet_is_fee_payer`.

    `confirmation_status` is the `confirmationStatus` the node reported (from
    `getSignaturesForAddress`); when given, anything but "finalized" is refused. Leaving it
    out means the caller fetched with commitment "finalized", which only returns finalized
    transactions. Never raises: any shape it cannot read is a refusal with a reason.
    """
    signature: str | None = None
    slot: int | None = None
    block_time: int | None = None
    try:
        if tx is None:
            raise _Refuse("transaction not found")
        tx = _mapping(tx, "transaction")
        transaction = _mapping(tx.get("transaction"), "transaction.transaction")
        sigs = transaction.get("signatures")
        if isinstance(sigs, list) and sigs and isinstance(sigs[0], str):
            signature = sigs[0]
        raw_slot, raw_time = tx.get("slot"), tx.get("blockTime")
        slot = raw_slot if isinstance(raw_slot, int) and not isinstance(raw_slot, bool) else None
        block_time = (
            raw_time if isinstance(raw_time, int) and not isinstance(raw_time, bool) else None
        )
        if signature is None:
            raise _Refuse("transaction has no signature")
        if confirmation_status is not None and confirmation_status != "finalized":
            raise _Refuse(f"transaction is {confirmation_status!r}, not finalized")
        if not is_pubkey(wallet) or not is_pubkey(reference):
            raise _Refuse("wallet or reference is not a base58 public key")
        if isinstance(expected_lamports, bool) or not isinstance(expected_lamports, int):
            raise _Refuse("expected amount is not an int")
        if not 0 < expected_lamports <= MAX_LAMPORTS:
            raise _Refuse("expected amount is not positive")

        meta = _mapping(tx.get("meta"), "meta")
        if "err" not in meta:
            raise _Refuse("meta.err is missing, so success is unknown")
        if meta["err"] is not None:
            raise _Refuse(f"transaction failed on chain: {str(meta['err'])[:120]}")
        status = meta.get("status")
        if status is not None and (not isinstance(status, Mapping) or "Err" in status):
            raise _Refuse("meta.status reports an error")

        message = _mapping(transaction.get("message"), "transaction.message")
        keys, signers = _account_keys(message)
        if reference not in keys:
            raise _Refuse("reference key is not in the transaction")
        if wallet not in keys:
            raise _Refuse("service wallet is not in the transaction")
        if reference == wallet:
            raise _Refuse("reference is the wallet itself")

        credited, debited = _system_flows(_instructions(message, meta), wallet)
        if debited:
            raise _Refuse(f"transaction moves {debited} lamports out of the service wallet")
        if credited != expected_lamports:
            raise _Refuse(
                f"transfers credit {credited} lamports to the wallet, expected {expected_lamports}"
            )

        index = keys.index(wallet)
        delta = _balance_change(meta, index, len(keys))
        flags: list[str] = []
        if index == 0:
            flags.append("wallet_is_fee_payer")
        elif signers[index]:
            flags.append("wallet_signed")
        if index != 0 and delta != expected_lamports:
            raise _Refuse(f"wallet balance changed by {delta}, expected {expected_lamports}")
        return TransferVerdict(
            ok=True,
            reason="ok" if not flags else "ok (" + ", ".join(flags) + ")",
            signature=signature,
            lamports=credited,
            slot=slot,
            block_time=block_time,
            flags=tuple(flags),
        )
    except _Refuse as refusal:
        reason = refusal.reason
    except Exception as exc:
        reason = f"unreadable transaction ({type(exc).__name__})"
    return TransferVerdict(
        ok=False, reason=reason, signature=signature, slot=slot, block_time=block_time
    )
