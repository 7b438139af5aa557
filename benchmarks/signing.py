"""The cost of message signing per task message: sign on the sender, verify on the worker.

    python benchmarks/signing.py            # --messages 20000 --kwargs-bytes 100

Compares each key kind with what a message costs without signing (encode_task + decode_task),
in one process, on a typical small task message, as CPU time per message.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conveyor.protocol.envelope import Envelope
from conveyor.protocol.signing import MessageSigning
from conveyor.protocol.task_message import TaskMessage, decode_task, encode_task


def per_message(fn: Callable[[], object], count: int) -> float:
    """CPU microseconds per call of ``fn``, best of five runs of ``count`` calls (CPU time,
    not wall time: on a shared machine other processes' load would count otherwise)."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(count):
            fn()
        best = min(best, (time.process_time() - start) / count)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--kwargs-bytes", type=int, default=100)
    args = parser.parse_args()
    n = args.messages
    message = TaskMessage(
        task="remote.transcode",
        id="6f1c0a8e",
        args=(1, 2),
        kwargs={"path": "x" * args.kwargs_bytes},
    )
    envelope = encode_task(message)
    base_encode = per_message(lambda: encode_task(message), n)
    base_decode = per_message(lambda: decode_task(envelope), n)
    print(f"message body {len(envelope.body)} bytes, {len(envelope.headers)} headers")
    print(f"{'without signing':>22}: encode {base_encode:6.2f} us   decode {base_decode:6.2f} us")
    kinds: dict[str, MessageSigning] = {
        "HMAC-SHA256 secret": MessageSigning.from_secret(b"k" * 32),
        "Ed25519": MessageSigning.from_keys("svc", ed25519.Ed25519PrivateKey.generate(), {}),
        "ECDSA P-256": MessageSigning.from_keys("svc", ec.generate_private_key(ec.SECP256R1()), {}),
        "RSA-2048 PSS": MessageSigning.from_keys(
            "svc", rsa.generate_private_key(public_exponent=65537, key_size=2048), {}
        ),
    }
    for name, signing in kinds.items():
        count = n if "RSA" not in name else max(n // 10, 100)
        signed: Envelope = signing.sign(envelope)
        sign = per_message(lambda s=signing: s.sign(envelope), count)  # type: ignore[misc]
        verify = per_message(lambda s=signing, e=signed: s.verify(e), count)  # type: ignore[misc]
        print(f"{name:>22}: sign   {sign:6.2f} us   verify {verify:6.2f} us   (+ per message)")


if __name__ == "__main__":
    main()
