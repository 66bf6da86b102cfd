"""What every daemon of this project shares: the process lifecycle (``lifecycle``:
``Daemon`` with supervised loops, signals, exit codes), configuration with
one-line errors and the shared value types (``config``: ``Duration``,
comma-separated lists), retry backoff (``backoff``), JSON logging (``logs``) and
the HTTP endpoints /metrics, /healthz, /readyz (``http``)."""
