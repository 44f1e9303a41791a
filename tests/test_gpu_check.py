"""scripts/gpu_check.py on CPU with --tiny (the real check needs an accelerator), and its peak table."""
import importlib.util
import pathlib
import re

import pytest

_spec = importlib.util.spec_from_file_location(
    "gpu_check", pathlib.Path(__file__).parents[1] / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_peak_table():
    assert gpu_check.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_check.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_check.peak_flops("NVIDIA H200") == 989e12
    assert gpu_check.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.peak_flops("TPU v5 lite") == 197e12 and gpu_check.peak_flops("TPU v4") == 275e12
    assert gpu_check.peak_flops("cpu") is None


def test_unknown_chip_asks_for_peak_flops():
    with pytest.raises(SystemExit, match="no peak FLOP/s known for device_kind 'cpu'; pass --peak_flops"):
        gpu_check.main([])


def test_tiny_run_reports_step_time_throughput_and_mfu(capsys):
    gpu_check.main(["--tiny", "--steps", "2", "--peak_flops", "1e11"])
    out = capsys.readouterr().out
    assert "memory per device (MiB): params" in out
    step = re.search(r"step ([\d.]+) ms \(median of 2\), ([\d,]+) tokens/s, .* MFU ([\d.]+)% of 1e\+11", out)
    assert step, out
    ms, tokens_per_s = float(step.group(1)), float(step.group(2).replace(",", ""))
    assert abs(tokens_per_s - 8 * 64 / (ms / 1e3)) < 0.01 * tokens_per_s
    assert 0 < float(step.group(3)) < 100
