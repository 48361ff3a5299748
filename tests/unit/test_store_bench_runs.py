"""The store benchmark keeps working (it imports the store's internals)."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "store_bench.py"


def test_store_bench_prints_its_table(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH), "--count", "200", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| write 4 KiB")]
    assert len(rows) == 1 and float(rows[0].split("|")[2]) > 0
