"""What every daemon of this project shares: configuration loading with clear
errors, JSON logging, the HTTP endpoints (/metrics, /healthz, /readyz) and the
process lifecycle (signals, exit codes)."""
