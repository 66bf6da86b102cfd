import os
import platform


def pytest_report_header(config):
    where = "UML sandbox" if os.environ.get("SANDBOX_KERNEL") == "uml" else "host"
    return f"kernel: {platform.release()} ({where})"


def pytest_runtest_logreport(report):
    """Print a failure's traceback when it happens, not only in the final summary.

    The kernel run is bounded by the sandbox's timeout: when a slow machine hits
    it, the guest is killed before pytest's summary, and the failures would be lost.
    """
    if report.failed:
        print(f"\n--- FAILED {report.nodeid} ({report.when}, {report.duration:.1f} s)\n{report.longreprtext}\n---", flush=True)
