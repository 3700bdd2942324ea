"""The issue-19 probe script: a probe's "after" is measured, and the table says what ran."""
import json

from experiments.benchmarks import probe_robustness as pr


def test_safetensors_probe_runs_and_the_table_names_its_command(tmp_path):
    records = pr.run_probes({5})
    assert [(r["item"], r["probe"], r["ok"]) for r in records] == [(5, "safetensors: hostile headers", True)]
    assert "length 2^63: ValueError" in records[0]["after"] and "$TMP" not in records[0]["before"]
    out = tmp_path / "probes.md"
    pr.write(records, str(out), pr.command({5}))
    md = out.read_text()
    assert "`python -m experiments.benchmarks.probe_robustness --only=5`" in md and "1/1 ok" in md
    assert "| 5 | safetensors: hostile headers | 2^31 → +2.5 GB;" in md and md.rstrip().endswith("| yes |")
    assert json.loads((tmp_path / "probes.json").read_text())["records"] == records
