import json

from click.testing import CliRunner

from sibeatgan.bench import step_flops
from sibeatgan.cli import main
from sibeatgan.models import build_models, conv_macs

KEYS = {
    "reference_samples_per_s",
    "default_samples_per_s",
    "fastest_samples_per_s",
    "fastest_gflops",
    "peak_gflops",
    "score_beats_per_s_b1024",
    "score_ms_per_beat_b1",
}


def test_macs_from_layer_shapes():
    g, d = build_models(1, 50, 32, 0)
    # the paper's figure: G forward is about 20 M multiply-adds per beat
    assert 19e6 < conv_macs(g) < 21e6
    assert conv_macs(d) < conv_macs(g) / 1.8
    assert step_flops(10, 1) == 2 * (30 + 9)


def test_bench_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main, ["bench", "--steps", "1", "--warmup", "1", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "x reference" in result.output and "GFLOP/s" in result.output
    data = json.loads(out.read_text())
    assert set(data) >= KEYS
    assert all(data[k] > 0 for k in KEYS)
    fastest = data["settings"][data["fastest_setting"]]
    assert data["fastest_samples_per_s"] == max(
        s["samples_per_s"] for s in data["settings"].values()
    )
    assert data["peak_gflops"] == data["peak_gflops_by_dtype"][fastest["precision"]]
