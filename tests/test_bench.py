import json

from click.testing import CliRunner

from sibeatgan.cli import main
from sibeatgan.models import build_models, conv_macs
from sibeatgan_bench.bench import step_flops

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
    kernels = data["kernels"]["default"]["onednn_ms"]
    assert any(k.startswith("convolution ") for k in kernels), "the step's convolutions are seen"
    assert "of one step, default" in result.output


def test_onednn_verbose_lines_are_totalled_by_kernel():
    from sibeatgan_bench.kernels import matrix_engine_share, parse_verbose

    lines = [
        "onednn_verbose,v1,info,cpu,runtime:OpenMP",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx10_1_512_amx,"
        "forward_training,src:bf16::blocked:acdb::f0,,alg:convolution_direct,mb64_ic32oc64,1.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx10_1_512_amx,"
        "forward_training,src:bf16::blocked:acdb::f0,,alg:convolution_direct,mb64_ic32oc64,0.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,backward_weights,"
        "src:f32::blocked:acdb::f0,,alg:convolution_direct,mb64_ic32oc64,6.0",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abc::f0,,,"
        "64x32,9.0",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,jit:avx512_core,x,y,z,3.0",
    ]
    totals = parse_verbose(lines)
    assert totals["convolution brg_conv_fwd:avx10_1_512_amx"] == {"ms": 2.0, "calls": 2}
    assert totals["convolution jit:avx512_core"] == {"ms": 6.0, "calls": 1}, "exec lines only"
    assert matrix_engine_share(totals) == 0.25, "reorders are not compute"
    assert matrix_engine_share(parse_verbose(lines[-2:])) is None
