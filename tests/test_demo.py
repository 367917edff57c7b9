"""The console command and the demo it runs."""

import json
import math
import subprocess
import sys

import memsinks
from memsinks.cli import main


def test_version_and_help(capsys):
    proc = subprocess.run([sys.executable, "-m", "memsinks", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"memsinks {memsinks.__version__}"
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_quick_demo_prints_the_table_and_writes_json(tmp_path, capsys):
    import torch

    out = tmp_path / "demo.json"
    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--json", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the caller's thread count, not the demo's, afterwards
    printed = capsys.readouterr().out
    for row in ("repeated sequences", "canary secrets", "held-out sequences", "sinks dropped"):
        assert row in printed
    results = json.loads(out.read_text())
    for name in ("repeated", "canaries", "heldout"):
        for mode in ("own", "drop", "plain"):
            assert math.isfinite(results[f"{name}/{mode}"]) and results[f"{name}/{mode}"] > 0
    # the sinks model routed by ID: its own-mode and drop-mode numbers are different models' outputs
    assert results["repeated/own"] != results["repeated/drop"]


def test_demo_on_a_users_jsonl_file(tmp_path, capsys, shakespeare_path):
    paragraphs = [p for p in shakespeare_path.read_text().split("\n\n") if p.strip()][:600]
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": p}) for p in paragraphs))
    out = tmp_path / "demo.json"
    assert main(["demo", "--quick", "--data", str(data), "--json", str(out)]) == 0
    assert "windows of" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert all(math.isfinite(v) for v in results.values())
