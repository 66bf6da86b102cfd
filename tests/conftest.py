import os
import platform


def pytest_report_header(config):
    where = "UML sandbox" if os.environ.get("SANDBOX_KERNEL") == "uml" else "host"
    return f"kernel: {platform.release()} ({where})"
