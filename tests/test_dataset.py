"""explain_dataset / load_explanations: shard plan, exact results, resuming after a kill or corruption, refusing
another run's folder, and a two-process torchrun (gloo) run equal to one process, shard for shard.

The model is float64 and every run uses one thread, so results are reproducible to the bit across processes;
shards are explained in the same batches whatever the world size (see lrpfx.data.plan)."""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import lrpfx
from lrpfx.data import DatasetError, ShardError, explain_dataset, load_explanations, plan, store

from tests.helpers import dataset_job as job

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run_job(out, rule=job.RULE, model=None, **options):
    """The job's run in this process (one thread): the reference the other runs are compared with."""
    x, y = job.build_tensors()
    options = {"batch_size": job.BATCH_SIZE, "shard_size": job.SHARD_SIZE, "store": "float64",
               "progress": False, **options}
    return explain_dataset(model or job.build_model(), job.GatedDataset(x, y), rule, out, **options)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run_job(out)
    return out


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("shard-*.safetensors"))}


def manifest(out):
    return json.loads((Path(out) / "manifest.json").read_text())


def copy_run(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


# ---- the shard plan ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,size", [(40, 8), (37, 10), (5, 16), (1, 1)])
def test_plan_covers_every_index_once_for_any_world_size(length, size):
    shards = plan.plan_shards(length, size)
    assert [s.index for s in shards] == list(range(len(shards)))
    assert all(s.stop - s.start == size for s in shards[:-1]) and 0 < shards[-1].stop - shards[-1].start <= size
    for world in (1, 2, 3, 4):
        parts = [plan.assign_shards(shards, rank, world) for rank in range(world)]
        indices = sorted(i for part in parts for s in part for b in plan.shard_batches(s, 3) for i in b)
        assert indices == list(range(length))          # disjoint and complete
        assert [s.index for s in parts[world - 1]] == list(range(world - 1, len(shards), world))  # round-robin
    # batches never cross a shard border, and the same shard is cut into the same batches every time
    assert plan.shard_batches(plan.Shard(2, 16, 24), 3) == [[16, 17, 18], [19, 20, 21], [22, 23]]


def test_shard_size_options():
    assert plan.resolve_shard_size(100, 8, None, 4) == 25
    assert plan.resolve_shard_size(100, 8, 10, None) == 10
    assert plan.resolve_shard_size(10_000, 8, None, None) == 512
    assert plan.resolve_shard_size(10_000, 100, None, None) == 500   # whole batches
    with pytest.raises(lrpfx.InputError, match="not both"):
        plan.resolve_shard_size(100, 8, 10, 4)


# ---- results -------------------------------------------------------------------------------------------------
def test_shards_hold_exactly_what_the_explainer_gives(reference):
    view = load_explanations(reference)
    m = manifest(reference)
    assert m["complete"] and m["num_shards"] == 5 and len(view) == job.LENGTH == m["num_samples"]
    assert [s["file"] for s in m["shards"]] == [f"shard-{k:05d}.safetensors" for k in range(5)]
    assert m["run"]["rule"]["label"] == job.RULE and m["run"]["store"] == "float64"
    assert m["torch_version"] == torch.__version__ and m["lrpfx_version"] == lrpfx.__version__
    x, y = job.build_tensors()
    explainer = lrpfx.Explainer(job.build_model(), job.RULE)
    for shard in plan.plan_shards(job.LENGTH, job.SHARD_SIZE):
        for batch in plan.shard_batches(shard, job.BATCH_SIZE):   # the batches the run used
            expected = explainer(x[batch])
            got = view[batch]
            assert torch.equal(got.index, torch.tensor(batch))
            assert torch.equal(got.relevance, expected.relevance)
            assert torch.equal(got.output, expected.output)
            assert torch.equal(got.target, expected.output.argmax(1))
            assert torch.equal(got.label, y[batch])


def test_targets(tmp_path):
    x, y = job.build_tensors(12)
    model = job.build_model()
    data = TensorDataset(x, y)
    options = dict(batch_size=4, shard_size=6, store="float64", progress=False)
    per_sample = [int(i) % 5 for i in range(12)]
    cases = {"label": y, 3: torch.full((12,), 3), "per_sample": torch.tensor(per_sample),
             "callable": torch.tensor([4, 4, 4, 4] * 3)}
    for name, expected in cases.items():
        target = {"per_sample": per_sample, "callable": lambda batch: [4] * batch[0].shape[0]}.get(name, name)
        view = explain_dataset(model, data, "epsilon", tmp_path / str(name), target=target, **options)
        got = view[:]
        assert torch.equal(got.target, expected), name
        direct = [lrpfx.explain(model, x[i:i + 4], "epsilon", target=expected[i:i + 4]) for i in (0, 4, 8)]
        assert torch.equal(got.relevance, torch.cat(direct)), name
    with pytest.raises(lrpfx.TargetError, match="label"):
        explain_dataset(model, x, "epsilon", tmp_path / "nolabels", target="label", **options)
    with pytest.raises(lrpfx.TargetError, match="one class per sample"):
        explain_dataset(model, data, "epsilon", tmp_path / "short", target=[1, 2, 3], **options)


def test_inputs_loader_tensor_and_store_dtype(tmp_path):
    x, y = job.build_tensors(10)
    model = job.build_model().float()
    loader = DataLoader(TensorDataset(x.float(), y), batch_size=4, shuffle=True)   # the sampler is not used
    view = explain_dataset(model, loader, "epsilon", tmp_path / "a", num_shards=2, progress=False)
    assert view.manifest["batch_size"] == 4 and view.manifest["shard_size"] == 5 and view.num_shards == 2
    assert view[0].relevance.dtype == torch.float16 and view[0].output.dtype == torch.float32
    assert torch.equal(view[:].index, torch.arange(10))
    view = explain_dataset(model, x.float(), "epsilon", tmp_path / "b", batch_size=5, store="float32",
                           progress=False)
    assert view[3].label is None and view[3].relevance.dtype == torch.float32
    assert torch.allclose(view[3].relevance, lrpfx.explain(model, x[:5].float(), "epsilon")[3], atol=1e-6)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(x)

    with pytest.raises(lrpfx.InputError, match="map-style"):
        explain_dataset(model, Stream(), "epsilon", tmp_path / "c", progress=False)
    with pytest.raises(lrpfx.InputError, match="store"):
        explain_dataset(model, x, "epsilon", tmp_path / "d", store="int8", progress=False)


def test_progress_bar_reports_samples_per_second(tmp_path, capsys):
    x, _ = job.build_tensors(6)
    explain_dataset(job.build_model(), x, "epsilon", tmp_path, batch_size=3, progress=True)
    err = capsys.readouterr().err
    assert "sample/s" in err and "6/6" in err


def test_view_indexing(reference):
    view = load_explanations(reference, cache=1)   # one shard in memory: reads alternate between shards
    everything = view[:]
    assert everything.relevance.shape == (40, 1, 8, 8) and torch.equal(everything.index, torch.arange(40))
    for i in (0, 7, 8, 39, -1, -40):
        sample = view[i]
        assert sample.index == i % 40
        assert torch.equal(sample.relevance, everything.relevance[i])
        assert sample.target == int(everything.target[i]) and sample.label == int(everything.label[i])
    picked = view[[33, 2, 17, 2]]
    assert picked.index.tolist() == [33, 2, 17, 2]
    assert torch.equal(picked.relevance, everything.relevance[[33, 2, 17, 2]])
    assert view[torch.tensor([5, 9])].index.tolist() == [5, 9]
    assert view[5:5].relevance.shape == (0, 1, 8, 8)
    assert view[30:2:-7].index.tolist() == [30, 23, 16, 9]
    assert [s.index for s in view][:3] == [0, 1, 2]
    assert sum(b["index"].numel() for b in view.batches()) == 40
    with pytest.raises(IndexError):
        view[40]
    assert "40 samples in 5 shards" in repr(view)


# ---- resuming ------------------------------------------------------------------------------------------------
def test_rerun_keeps_verified_shards(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    stats = run_job(out).stats
    assert (stats.shards_skipped, stats.shards_written, stats.samples) == (5, 0, 0)
    assert shard_bytes(out) == shard_bytes(reference)
    stats = run_job(out, resume=False).stats
    assert (stats.shards_skipped, stats.shards_written) == (0, 5)
    assert shard_bytes(out) == shard_bytes(reference)


def test_corrupted_shard_is_detected_and_redone(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    path = out / "shard-00003.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40    # one flipped bit in the relevance data
    path.write_bytes(bytes(raw))
    view = load_explanations(out)
    assert view[0].index == 0                        # other shards still read
    with pytest.raises(ShardError, match="shard-00003.*checksum"):
        view[3 * job.SHARD_SIZE]
    (out / "shard-00001.safetensors").write_bytes(raw[:100])  # truncated
    shutil.copy(out / "shard-00000.safetensors", out / "shard-00004.safetensors")  # a complete shard, wrong place
    stats = run_job(out).stats
    assert (stats.shards_skipped, stats.shards_redone, stats.shards_written) == (2, 3, 3)
    assert shard_bytes(out) == shard_bytes(reference)
    load_explanations(out).verify_all()


def test_crash_during_write_leaves_no_complete_looking_shard(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace
    calls = []

    def crash_on_third_shard(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 4:     # manifest, shard 0, shard 1, then shard 2: written under its temporary name
            assert Path(src).read_bytes()[:8] and Path(dst).name == "shard-00002.safetensors"
            raise KeyboardInterrupt("simulated crash between write and rename")
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        run_job(out)
    monkeypatch.setattr(store.os, "replace", real_replace)
    # two shards and the run's first manifest were renamed into place; the third never got its name
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.safetensors",
                                                      "shard-00001.safetensors"]
    assert manifest(out)["complete"] is False
    with pytest.raises(DatasetError, match="incomplete"):
        load_explanations(out)
    (out / "shard-00002.safetensors.tmp-12345").write_bytes(b"half a shard")  # what a killed writer leaves
    stats = run_job(out).stats
    assert (stats.shards_skipped, stats.shards_written) == (2, 3)
    assert not list(out.glob("*.tmp-*"))
    assert shard_bytes(out) == shard_bytes(reference)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(reference, tmp_path):
    out = tmp_path / "run"
    shard = 2
    gate = shard * job.SHARD_SIZE + job.BATCH_SIZE    # shard 2's second batch blocks: the kill lands mid-shard
    proc = subprocess.Popen([sys.executable, job.__file__, str(out), "--gate", str(gate), "--announce-gate"], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)   # the job announces that it reached the gate
        assert ready and proc.poll() is None, proc.poll() is not None and proc.communicate()[1]
        reached = json.loads(proc.stdout.readline())
        # blocked inside shard 2: its first batch was fetched (and explained), the shards before it are on disk,
        # and nothing of shard 2 is, not even a temporary file
        assert reached["gate"] == gate
        assert reached["fetched"] == list(range(gate)), reached
        assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert manifest(out)["complete"] is False
    stats = run_job(out).stats
    assert (stats.shards_skipped, stats.shards_written, stats.samples) == (2, 3, 24)
    assert shard_bytes(out) == shard_bytes(reference)
    assert [s["sha256"] for s in manifest(out)["shards"]] == [s["sha256"] for s in manifest(reference)["shards"]]


# ---- refusing another run's folder ---------------------------------------------------------------------------
def test_folder_of_another_run_is_refused_unless_overwrite(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    before = shard_bytes(out)
    with pytest.raises(DatasetError, match=r"another run: a different rule \('epsilon-plus-flat', this is "
                                           r"'epsilon'\).*overwrite=True"):
        run_job(out, rule="epsilon")
    with pytest.raises(DatasetError, match="a different model"):
        run_job(out, model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)).double())
    retrained = job.build_model()
    with torch.no_grad():
        retrained[0].bias.add_(1.0)
    with pytest.raises(DatasetError, match="different weights"):
        run_job(out, model=retrained)
    with pytest.raises(DatasetError, match="a different target"):
        run_job(out, target="label")
    with pytest.raises(DatasetError, match="store dtype"):
        run_job(out, store="float32")
    with pytest.raises(DatasetError, match="shard size"):
        run_job(out, shard_size=16)
    assert shard_bytes(out) == before                            # nothing was touched
    view = run_job(out, shard_size=16, overwrite=True)           # 3 shards replace 5
    assert view.num_shards == 3 and len(list(out.glob("shard-*"))) == 3
    assert manifest(out)["run"]["shard_size"] == 16


def test_unknown_folder_contents_are_refused(tmp_path):
    (tmp_path / "shard-00000.safetensors").write_bytes(b"x")
    with pytest.raises(DatasetError, match="no manifest.json"):
        run_job(tmp_path)
    (tmp_path / "manifest.json").write_text('{"something": "else"}')
    with pytest.raises(DatasetError, match="not an lrpfx explanations manifest"):
        run_job(tmp_path)
    with pytest.raises(DatasetError, match="no manifest.json"):
        load_explanations(tmp_path / "missing")
    assert len(run_job(tmp_path, overwrite=True)) == job.LENGTH


# ---- distributed ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(reference, tmp_path):
    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           job.__file__, str(out)], env=ENV, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
                   key=lambda r: r["rank"])
    assert [(r["rank"], r["world_size"], r["written"]) for r in ranks] == [(0, 2, 3), (1, 2, 2)], done.stdout
    assert ranks[0]["pid"] != ranks[1]["pid"]
    m, ref = manifest(out), manifest(reference)
    assert m["world_size"] == 2 and m["complete"] and m["fingerprint"] == ref["fingerprint"]
    assert m["shards"] == ref["shards"]                          # same files, ranges and checksums
    assert shard_bytes(out) == shard_bytes(reference)             # shard for shard, byte for byte
    a, b = load_explanations(out)[:], load_explanations(reference)[:]
    for name in ("index", "relevance", "output", "target", "label"):  # sample for sample
        assert torch.equal(getattr(a, name), getattr(b, name)), name
