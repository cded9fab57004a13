"""A Lambda context object, as the runtime hands one to the handler (the fields Powertools reads)."""

from __future__ import annotations


class FakeContext:
    function_name = "publisher"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:publisher"
    aws_request_id = "req-test"

    def __init__(self, remaining_ms: int = 50_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
