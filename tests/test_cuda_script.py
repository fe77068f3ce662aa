"""benchmarks/cuda.py runs end to end on the CPU at tiny sizes (`--device cpu --quick`): both models, both
traced paths, outputs equal to the plain ones, and the log-sum-exp from the fused kernel only when allowed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda.py"


def test_quick_cpu_run_writes_the_table_and_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("cuda_benchmark", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--device", "cpu", "--quick", "--json", str(tmp_path / "cuda.json")])
    result = json.loads((tmp_path / "cuda.json").read_text())
    assert set(result["models"]) == {"flux_width", "sdxl_width"}
    for row in result["models"].values():
        assert row["equal"] == {"lse": True, "explicit": True}
        lse, explicit = row["lse_sources"]["lse"], row["lse_sources"]["explicit"]
        assert set(lse) == {"cpu flash"} and set(explicit) == {"explicit"}
        assert sum(lse.values()) == sum(explicit.values()) > 0  # the same calls, recorded either way
        assert row["ratio_lse_min"] > 0 and row["ratio_explicit_min"] > 0
    table = capsys.readouterr().out
    assert "| Flux.1 width, 2 double + 2 single blocks (tiny) | 64 px | 2 |" in table
    assert "yes / yes" in table and "cpu flash" in table
