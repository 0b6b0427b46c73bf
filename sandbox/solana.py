"""A Solana JSON-RPC node stand-in: a ledger of SOL transfers the tests and the demo control.

It answers `getSignaturesForAddress` and `getTransaction` with the shapes a real node
returns (including `jsonParsed` instructions, pre/post balances, versioned transactions and
the -32015 error for clients that do not declare `maxSupportedTransactionVersion`), plus
`getHealth`, `getSlot`, `getBalance` and `getVersion` for convenience. `fail_next` and
`stop` inject the faults a public RPC endpoint really has.
"""

from __future__ import annotations

import json
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog
from aiohttp import web

from messages.solana import (
    MEMO_PROGRAM_ID,
    SYSTEM_PROGRAM_ID,
    b58decode,
    b58encode,
    is_pubkey,
)
from sandbox._loopback import LoopbackHttpServer

__all__ = ["DEFAULT_FEE", "SolanaRpcError", "SolanaRpcStub"]

log = structlog.get_logger(__name__)

DEFAULT_FEE: Final = 5000
STARTING_BALANCE: Final = 100 * 1_000_000_000
"""Unknown payers are funded with 100 SOL on first sight so tests need no setup."""
_COMMITMENTS: Final = ("processed", "confirmed", "finalized")

Status = Literal["finalized", "confirmed"]
Version = Literal[0, "legacy"]


class SolanaRpcError(Exception):
    """A JSON-RPC error answer (code and message as the real node sends them)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _invalid(message: str) -> SolanaRpcError:
    return SolanaRpcError(-32602, message)


@dataclass
class _Key:
    pubkey: str
    signer: bool
    writable: bool


@dataclass
class _Tx:
    signature: str
    slot: int
    block_time: int
    status: Status
    version: Version
    keys: list[_Key]
    fee: int
    err: dict[str, Any] | None
    memo: str | None
    source: str
    destination: str
    lamports: int
    pre: list[int]
    post: list[int]
    blockhash: str
    logs: list[str] = field(default_factory=list)

    def mentions(self, address: str) -> bool:
        return any(k.pubkey == address for k in self.keys)


class SolanaRpcStub(LoopbackHttpServer):
    """JSON-RPC 2.0 over HTTP POST at `url` (the root path), like a Solana RPC endpoint."""

    def __init__(self, *, start_slot: int = 300_000_000) -> None:
        super().__init__()
        self._txs: dict[str, _Tx] = {}
        self._order: list[str] = []
        self._balances: dict[str, int] = {}
        self._slot = start_slot
        self._failures: list[Literal["http", "rpc"]] = []
        self.requests: list[tuple[str, Any]] = []
        """Every (method, params) received, for tests that check what a client asked."""

    # -- ledger control -------------------------------------------------------------

    def fund(self, pubkey: str, lamports: int) -> None:
        """Set an account's balance (the node's view before the next transfer)."""
        self._balances[pubkey] = lamports

    def balance(self, pubkey: str) -> int:
        return self._balances.get(pubkey, 0)

    def add_transfer(
        self,
        *,
        source: str,
        destination: str,
        lamports: int,
        reference: str | None,
        memo: str | None = None,
        status: Status = "finalized",
        err: dict[str, Any] | None = None,
        fee_payer: str | None = None,
        version: Version = 0,
        block_time: int | None = None,
    ) -> str:
        """Record a Solana Pay style transfer (memo, then transfer with the reference as a
        read-only key) and return its signature. A payer without the funds gets the real
        node's error; `err` forces any other failure (fee still charged, nothing moves)."""
        payer = fee_payer or source
        for name, key in (("source", source), ("destination", destination), ("fee_payer", payer)):
            if not is_pubkey(key):
                raise ValueError(f"{name} is not a base58 public key")
        if reference is not None and not is_pubkey(reference):
            raise ValueError("reference is not a base58 public key")
        if isinstance(lamports, bool) or not isinstance(lamports, int) or lamports < 0:
            raise ValueError("lamports must be a non-negative int")
        if status not in ("finalized", "confirmed"):
            raise ValueError("status must be 'finalized' or 'confirmed'")
        if version not in (0, "legacy"):
            raise ValueError("version must be 0 or 'legacy'")

        keys: list[_Key] = []

        def add(pubkey: str, *, signer: bool, writable: bool) -> None:
            for existing in keys:
                if existing.pubkey == pubkey:
                    existing.signer |= signer
                    existing.writable |= writable
                    return
            keys.append(_Key(pubkey, signer, writable))

        add(payer, signer=True, writable=True)
        add(source, signer=True, writable=True)
        add(destination, signer=False, writable=True)
        if reference is not None:
            add(reference, signer=False, writable=False)
        add(SYSTEM_PROGRAM_ID, signer=False, writable=False)
        if memo is not None:
            add(MEMO_PROGRAM_ID, signer=False, writable=False)
        # Real messages order keys: writable signers, read-only signers, writable, read-only.
        keys[1:] = sorted(keys[1:], key=lambda k: (not k.signer, not k.writable))

        for key in (payer, source):
            self._balances.setdefault(key, STARTING_BALANCE)
        pre = [self._balances.get(k.pubkey, 0) for k in keys]
        fee = DEFAULT_FEE
        if err is None and self.balance(source) - (fee if source == payer else 0) < lamports:
            err = {"InstructionError": [1 if memo is not None else 0, {"Custom": 1}]}
        self._balances[payer] = self.balance(payer) - fee
        if err is None:
            self._balances[source] = self.balance(source) - lamports
            self._balances[destination] = self.balance(destination) + lamports
        post = [self._balances.get(k.pubkey, 0) for k in keys]

        self._slot += 3
        signature = b58encode(secrets.token_bytes(64))
        tx = _Tx(
            signature=signature,
            slot=self._slot,
            block_time=int(time.time()) if block_time is None else block_time,
            status=status,
            version=version,
            keys=keys,
            fee=fee,
            err=err,
            memo=memo,
            source=source,
            destination=destination,
            lamports=lamports,
            pre=pre,
            post=post,
            blockhash=b58encode(secrets.token_bytes(32)),
        )
        tx.logs = _logs(tx)
        self._txs[signature] = tx
        self._order.append(signature)
        log.info("solana_stub.transfer", signature=signature, lamports=lamports, status=status)
        return signature

    def finalize(self, signature: str) -> None:
        """Promote a confirmed transaction to finalized (KeyError if unknown)."""
        self._txs[signature].status = "finalized"

    def fail_next(self, n: int = 1, *, mode: Literal["http", "rpc"] = "http") -> None:
        """Fail the next `n` requests: "http" = 503 from a proxy, "rpc" = node unhealthy."""
        self._failures.extend([mode] * n)

    # -- HTTP / JSON-RPC ------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        unhealthy = False
        if self._failures:
            if self._failures.pop(0) == "http":
                return web.Response(status=503, text="Service Unavailable")
            unhealthy = True
        try:
            payload = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return web.json_response(_error(None, -32700, "Parse error"))
        if isinstance(payload, list):
            if not payload:
                return web.json_response(_error(None, -32600, "Invalid request"))
            return web.json_response([self._dispatch(item, unhealthy) for item in payload])
        return web.json_response(self._dispatch(payload, unhealthy))

    def _dispatch(self, item: object, unhealthy: bool = False) -> dict[str, Any]:
        if not isinstance(item, dict):
            return _error(None, -32600, "Invalid request")
        req_id = item.get("id")
        method, params = item.get("method"), item.get("params", [])
        if item.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return _error(req_id, -32600, "Invalid request")
        self.requests.append((method, params))
        if unhealthy:
            return _error(req_id, -32005, "Node is unhealthy")
        handler = {
            "getSignaturesForAddress": self._get_signatures_for_address,
            "getTransaction": self._get_transaction,
            "getHealth": self._get_health,
            "getSlot": self._get_slot,
            "getBalance": self._get_balance,
            "getVersion": self._get_version,
        }.get(method)
        if handler is None:
            return _error(req_id, -32601, "Method not found")
        if not isinstance(params, list):
            return _error(req_id, -32602, "Invalid params: expected an array")
        try:
            return {"jsonrpc": "2.0", "result": handler(params), "id": req_id}
        except SolanaRpcError as exc:
            return _error(req_id, exc.code, exc.message)

    def _visible(self, tx: _Tx, commitment: str) -> bool:
        return commitment != "finalized" or tx.status == "finalized"

    def _get_signatures_for_address(self, params: list[Any]) -> list[dict[str, Any]]:
        address = params[0] if params else None
        if not isinstance(address, str) or not is_pubkey(address):
            raise _invalid("Invalid param: Invalid")
        config = _config(params, 1)
        commitment = _commitment(config, minimum="confirmed")
        limit = config.get("limit", 1000)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise _invalid("Invalid limit; max 1000")
        before, until = config.get("before"), config.get("until")
        for name, value in (("before", before), ("until", until)):
            if value is not None and not _is_signature(value):
                raise _invalid(f"Invalid param: {name} is not a signature")
        rows: list[dict[str, Any]] = []
        started = before is None
        for signature in reversed(self._order):
            if not started:
                started = signature == before
                continue
            if signature == until:
                break
            tx = self._txs[signature]
            if not tx.mentions(address) or not self._visible(tx, commitment):
                continue
            rows.append(
                {
                    "blockTime": tx.block_time,
                    "confirmationStatus": tx.status,
                    "err": tx.err,
                    "memo": None if tx.memo is None else f"[{len(tx.memo)}] {tx.memo}",
                    "signature": tx.signature,
                    "slot": tx.slot,
                }
            )
            if len(rows) == limit:
                break
        return rows

    def _get_transaction(self, params: list[Any]) -> dict[str, Any] | None:
        signature = params[0] if params else None
        if not isinstance(signature, str) or not _is_signature(signature):
            raise _invalid("Invalid param: Invalid")
        raw = params[1] if len(params) > 1 else None
        config: dict[str, Any] = {"encoding": raw} if isinstance(raw, str) else _config(params, 1)
        commitment = _commitment(config, minimum="confirmed")
        encoding = config.get("encoding", "json")
        if encoding not in ("json", "jsonParsed"):
            raise _invalid(f"Invalid params: unsupported encoding {str(encoding)[:20]!r}")
        max_version = config.get("maxSupportedTransactionVersion")
        if max_version is not None and max_version != 0:
            raise _invalid("Invalid params: unsupported maxSupportedTransactionVersion")
        tx = self._txs.get(signature)
        if tx is None or not self._visible(tx, commitment):
            return None
        if tx.version == 0 and max_version is None:
            raise SolanaRpcError(
                -32015,
                "Transaction version (0) is not supported by the requesting client. Please "
                "try the request again with the following configuration parameter: "
                '"maxSupportedTransactionVersion": 0',
            )
        return _render(tx, parsed=encoding == "jsonParsed", declared=max_version is not None)

    def _get_health(self, params: list[Any]) -> str:
        return "ok"

    def _get_slot(self, params: list[Any]) -> int:
        return self._slot

    def _get_balance(self, params: list[Any]) -> dict[str, Any]:
        address = params[0] if params else None
        if not isinstance(address, str) or not is_pubkey(address):
            raise _invalid("Invalid param: Invalid")
        context = {"apiVersion": "2.2.0", "slot": self._slot}
        return {"context": context, "value": self.balance(address)}

    def _get_version(self, params: list[Any]) -> dict[str, Any]:
        return {"feature-set": 3294202862, "solana-core": "2.2.0"}


def _error(req_id: object, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": req_id}


def _config(params: list[Any], index: int) -> dict[str, Any]:
    config = params[index] if len(params) > index else None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _invalid("Invalid params: config must be an object")
    return config


def _commitment(config: dict[str, Any], *, minimum: str) -> str:
    commitment = config.get("commitment", "finalized")
    if commitment not in _COMMITMENTS:
        raise _invalid(f"Invalid params: unknown commitment {str(commitment)[:20]!r}")
    if _COMMITMENTS.index(commitment) < _COMMITMENTS.index(minimum):
        raise _invalid(f"Method does not support commitment below `{minimum}`")
    return str(commitment)


def _is_signature(value: object) -> bool:
    if not isinstance(value, str) or not 64 <= len(value) <= 88:
        return False
    try:
        return len(b58decode(value)) == 64
    except ValueError:
        return False


def _logs(tx: _Tx) -> list[str]:
    lines: list[str] = []
    if tx.memo is not None:
        lines += [
            f"Program {MEMO_PROGRAM_ID} invoke [1]",
            f'Program log: Memo (len {len(tx.memo.encode())}): "{tx.memo}"',
            f"Program {MEMO_PROGRAM_ID} consumed 3000 of 400000 compute units",
            f"Program {MEMO_PROGRAM_ID} success",
        ]
    lines.append(f"Program {SYSTEM_PROGRAM_ID} invoke [1]")
    if tx.err is None:
        lines.append(f"Program {SYSTEM_PROGRAM_ID} success")
    else:
        lines += [
            f"Transfer: insufficient lamports, need {tx.lamports}",
            f"Program {SYSTEM_PROGRAM_ID} failed: custom program error: 0x1",
        ]
    return lines


def _render(tx: _Tx, *, parsed: bool, declared: bool) -> dict[str, Any]:
    """A `getTransaction` result in "json" or "jsonParsed" encoding."""
    index = {k.pubkey: i for i, k in enumerate(tx.keys)}
    transfer_accounts = [tx.source, tx.destination] + [
        k.pubkey for k in tx.keys if not k.signer and not k.writable and k.pubkey not in _PROGRAMS
    ]
    instructions: list[dict[str, Any]] = []
    if tx.memo is not None:
        if parsed:
            instructions.append(
                {
                    "parsed": tx.memo,
                    "program": "spl-memo",
                    "programId": MEMO_PROGRAM_ID,
                    "stackHeight": None,
                }
            )
        else:
            instructions.append(
                {
                    "accounts": [],
                    "data": b58encode(tx.memo.encode()),
                    "programIdIndex": index[MEMO_PROGRAM_ID],
                    "stackHeight": None,
                }
            )
    if parsed:
        info = {"destination": tx.destination, "lamports": tx.lamports, "source": tx.source}
        instructions.append(
            {
                "parsed": {"info": info, "type": "transfer"},
                "program": "system",
                "programId": SYSTEM_PROGRAM_ID,
                "stackHeight": None,
            }
        )
    else:
        instructions.append(
            {
                "accounts": [index[a] for a in transfer_accounts],
                "data": b58encode(struct.pack("<IQ", 2, tx.lamports)),
                "programIdIndex": index[SYSTEM_PROGRAM_ID],
                "stackHeight": None,
            }
        )
    message: dict[str, Any] = {"instructions": instructions, "recentBlockhash": tx.blockhash}
    if parsed:
        message["accountKeys"] = [
            {
                "pubkey": k.pubkey,
                "signer": k.signer,
                "source": "transaction",
                "writable": k.writable,
            }
            for k in tx.keys
        ]
    else:
        message["accountKeys"] = [k.pubkey for k in tx.keys]
        message["header"] = {
            "numReadonlySignedAccounts": sum(k.signer and not k.writable for k in tx.keys),
            "numReadonlyUnsignedAccounts": sum(not k.signer and not k.writable for k in tx.keys),
            "numRequiredSignatures": sum(k.signer for k in tx.keys),
        }
    if tx.version == 0:
        message["addressTableLookups"] = []
    meta: dict[str, Any] = {
        "computeUnitsConsumed": 3150 if tx.memo is not None else 150,
        "err": tx.err,
        "fee": tx.fee,
        "innerInstructions": [],
        "logMessages": list(tx.logs),
        "postBalances": list(tx.post),
        "postTokenBalances": [],
        "preBalances": list(tx.pre),
        "preTokenBalances": [],
        "rewards": [],
        "status": {"Ok": None} if tx.err is None else {"Err": tx.err},
    }
    if not parsed and tx.version == 0:
        meta["loadedAddresses"] = {"readonly": [], "writable": []}
    result: dict[str, Any] = {
        "blockTime": tx.block_time,
        "meta": meta,
        "slot": tx.slot,
        "transaction": {"message": message, "signatures": [tx.signature]},
    }
    if declared:
        result["version"] = tx.version
    return result


_PROGRAMS: Final = frozenset({SYSTEM_PROGRAM_ID, MEMO_PROGRAM_ID})
