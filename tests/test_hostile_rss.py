"""The daemon's memory under hostile messages stays bounded (issue 10, item 1): the short
mode of tools/hostile_rss.py, judged by its verdict (peaks, replies, deliveries; never
by time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_hostile_messages_leave_the_daemons_memory_bounded(tmp_path: Path) -> None:
    out = tmp_path / "rss.json"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "hostile_rss.py"), "--short",
                             "--json-out", str(out)], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["problems"] == []
    assert all(single["reply"][:1] == "5" and single["peak_mb"] <= 200
               for single in report["single"])
    assert report["concurrent"]["delivered"] == report["concurrent"]["messages"] == 5
    assert report["concurrent"]["peak_mb"] <= 500
