"""Checkpoints without pickle: bit-identical resume, damaged and foreign files, atomic writes.

For every registered optimizer and a few configurations, train N steps, save, train M more; load
the file into a fresh Updater (dump_optimizer=True) and train the same M steps: the weights after
every step and the final states must be bit-identical.
"""
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest

import optforge
from optforge import lr_scheduler as lrs

N, M = 3, 4
SHAPES = [(4, 3), (5,), (2, 2, 2)]
NAMES = {0: "fc1_weight", 1: "fc1_bias", 2: "bn_gamma"}


def _configs(name):
    hyper = {h.name for h in optforge.registered()[name].hyperparams}
    mom = {"momentum": 0.9} if "momentum" in hyper else {}
    out = [("plain", {}, np.float32),
           ("sched", {**mom, "sched": True}, np.float32),
           ("fp16-mp", {**mom, "multi_precision": True}, np.float16),
           ("lr-mult-name", {**mom, "names": True, "wd": 0.01}, np.float64)]
    if mom:
        out.append(("momentum", mom, np.float32))
    if "batch_scale" in hyper:
        out.append(("batch-scale", {**mom, "batch_scale": 2, "warmup_strategy": "power2"}, np.float32))
    return out


CASES = [(name, cid, kw, dt) for name in sorted(optforge.registered()) for cid, kw, dt in _configs(name)]


def _make(name, kw):
    kw = dict(kw)
    if kw.pop("sched", False):
        kw["lr_scheduler"] = lrs.MultiFactorScheduler(step=[2, 3, 5, 6], factor=0.5, base_lr=0.05, warmup_steps=2)
        kw["learning_rate"] = 0.05
    names = kw.pop("names", False)
    if names:
        kw["param_idx2name"] = dict(NAMES)
    opt = optforge.create(name, **kw)
    if names:
        opt.set_lr_mult({"fc1_bias": 0.5, 2: 2.0})
        opt.set_wd_mult({"fc1_weight": 0.1})
    return opt


def _grads(dtype, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[(0.1 * rng.standard_normal(s)).astype(dtype) for s in SHAPES] for _ in range(steps)]


def _step(upd, n, grads, weights):
    """Alternate list updates (aggregated where the spec says so) and single-index updates."""
    if n % 2 == 0:
        upd(list(range(len(weights))), grads, weights)
    else:
        for i, (g, w) in enumerate(zip(grads, weights)):
            upd(i, g, w)


def _bits(a):
    return (a.dtype.str, a.shape, a.tobytes())


def _state_bits(upd):
    return {k: ({n: _bits(t) for n, t in s.tensors.items()}, s.scalars,
                None if s.master is None else _bits(s.master)) for k, s in upd.states.items()}


@pytest.mark.parametrize("name,cid,kw,dtype", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_resume_is_bit_identical(tmp_path, name, cid, kw, dtype):
    warnings.simplefilter("ignore")
    grads = _grads(dtype, N + M)
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    upd = optforge.get_updater(_make(name, kw))
    for n in range(N):
        _step(upd, n, grads[n], weights)
    path = tmp_path / "ckpt.npz"
    upd.save_states(path)
    saved = [w.copy() for w in weights]
    trajectory = []
    for n in range(N, N + M):
        _step(upd, n, grads[n], weights)
        trajectory.append([_bits(w) for w in weights])

    # a fresh updater with a default optimizer of the same kind: the file brings everything
    fresh = optforge.get_updater(optforge.create(name))
    fresh.load_states(path)
    assert type(fresh.optimizer) is type(upd.optimizer)
    resumed = [w.copy() for w in saved]
    for k, n in enumerate(range(N, N + M)):
        _step(fresh, n, grads[n], resumed)
        assert [_bits(w) for w in resumed] == trajectory[k], f"step {n} differs"
    assert _state_bits(fresh) == _state_bits(upd)
    assert fresh.optimizer.num_update == upd.optimizer.num_update
    assert fresh.optimizer._index_update_count == upd.optimizer._index_update_count

    # the module-level helper builds the updater itself
    again = optforge.load_states(path)
    resumed = [w.copy() for w in saved]
    for n in range(N, N + M):
        _step(again, n, grads[n], resumed)
    assert [_bits(w) for w in resumed] == trajectory[-1]


def test_unseeded_sgld_resumes_bit_identically(tmp_path):
    """SGLD's noise comes from the optimizer's generator, whose state the checkpoint carries."""
    w = np.zeros(50, np.float32)
    g = np.ones(50, np.float32)
    upd = optforge.get_updater(optforge.create("sgld", learning_rate=0.1))
    upd(0, g, w)
    upd.save_states(tmp_path / "c.npz")
    w_saved = w.copy()
    upd(0, g, w)
    fresh = optforge.load_states(tmp_path / "c.npz")
    fresh(0, g, w_saved)
    assert _bits(w_saved) == _bits(w)


def test_dump_optimizer_false_restores_states_only(tmp_path):
    """MXNet semantics: the current optimizer stays, with its own counters and hyperparameters."""
    opt = optforge.create("adam", learning_rate=0.1, beta1=0.5)
    upd = optforge.get_updater(opt)
    w = np.ones(4, np.float32)
    for _ in range(3):
        upd(0, np.full(4, 0.5, np.float32), w)
    upd.save_states(tmp_path / "s.npz", dump_optimizer=False)
    mine = optforge.create("adam", learning_rate=0.2)
    target = optforge.get_updater(mine)
    target.load_states(tmp_path / "s.npz")
    assert target.optimizer is mine and mine.num_update == 0 and mine.beta1 == 0.9
    assert _state_bits(target) == _state_bits(upd)
    with pytest.raises(ValueError, match="saved with dump_optimizer=False"):
        optforge.load_states(tmp_path / "s.npz")


def test_counters_globals_and_multipliers_round_trip():
    opt = optforge.create("lars", momentum=0.9, param_idx2name=dict(NAMES), begin_num_update=5,
                          lr_scheduler=lrs.FactorScheduler(step=2, factor=0.5, base_lr=1.0), learning_rate=1.0)
    opt.set_lr_mult({"fc1_bias": 3.0})
    upd = optforge.get_updater(opt)
    w = [np.ones(s, np.float32) for s in SHAPES]
    opt._set_current_context(1)
    upd([0, 1, 2], [np.ones(s, np.float32) for s in SHAPES], w)
    upd(0, np.ones(SHAPES[0], np.float32), w[0])
    back = optforge.get_updater(optforge.create("sgd"))
    back.set_states(upd.get_states(dump_optimizer=True))
    new = back.optimizer
    assert new._all_index_update_counts == opt._all_index_update_counts
    assert new._index_update_count is new._all_index_update_counts[1]
    assert (new.num_update, new.begin_num_update) == (opt.num_update, 5)
    assert new._globals == opt._globals and "last_lr" in new._globals
    assert (new.lr_mult, new.wd_mult, new.idx2name) == (opt.lr_mult, opt.wd_mult, opt.idx2name)
    assert new.lr_scheduler.get_config() == opt.lr_scheduler.get_config()
    assert new.hyperparameters() == opt.hyperparameters()


# ---- damaged, foreign and mismatched files ------------------------------------------------------------
def _trained(name="adam", **kw):
    upd = optforge.get_updater(optforge.create(name, **kw))
    w = [np.ones(s, np.float32) for s in SHAPES]
    upd([0, 1, 2], [np.full(s, 0.5, np.float32) for s in SHAPES], w)
    return upd


def _fingerprint(upd):
    opt = upd.optimizer
    return (id(opt), _state_bits(upd), dict(upd.states_synced), opt.num_update,
            dict(opt._index_update_count), dict(opt._globals), opt._rng.bit_generator.state)


def _members(blob):
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return {i.filename[:-4]: np.lib.format.read_array(zf.open(i)) for i in zf.infolist()}


def _rewrite(blob, edit_header=None, **extra):
    files = _members(blob)
    header = json.loads(files.pop("__header__").tobytes())
    if edit_header:
        edit_header(header)
    files.update(extra)
    buf = io.BytesIO()
    np.savez(buf, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8), **files)
    return buf.getvalue()


def _set(path, value):
    def edit(h):
        node = h
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return edit


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/optforge-pwned",))


def _pickle_blob(blob):
    return pickle.dumps(Evil())


def _object_array(blob):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with zf.open("__header__.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _random_zip(blob):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    return buf.getvalue()


def _flip(offset_fraction):
    def f(blob):
        b = bytearray(blob)
        b[int(len(b) * offset_fraction)] ^= 0x55
        return bytes(b)
    return f


def _compressed(blob):
    buf = io.BytesIO()
    np.savez_compressed(buf, **_members(blob))
    return buf.getvalue()


def _plain_npy(blob):
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


def _raw_member(name, header, body=b"\0" * 48):
    """Replace member `name` by a hand-made .npy: `header` is its dict, `body` its data bytes."""
    def make(blob):
        npy = io.BytesIO()
        np.lib.format.write_array_header_1_0(npy, header)
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                data = npy.getvalue() + body if info.filename == name + ".npy" else src.read(info)
                dst.writestr(info.filename, data)
        return out.getvalue()
    return make


BAD_FILES = [
    ("npy-huge-shape", _raw_member("s0.mean", {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)}), r"wrong size"),
    ("npy-structured", _raw_member("s0.mean", {"descr": [("a", "<f4")], "fortran_order": False, "shape": (12,)}), r"holds"),
    ("npy-object", _raw_member("s0.mean", {"descr": "|O", "fortran_order": False, "shape": (12,)}), r"holds object"),
    ("empty", lambda b: b"", r"not an optforge checkpoint"),
    ("pickle", _pickle_blob, r"not a zip archive"),
    ("json", lambda b: json.dumps({"format": "optforge-states"}).encode(), r"not a zip archive"),
    ("random-bytes", lambda b: np.random.default_rng(0).bytes(300), r"not an optforge checkpoint"),
    ("plain-npy", _plain_npy, r"not a zip archive"),
    ("random-zip", _random_zip, r"unexpected member 'readme.txt'"),
    ("object-array", _object_array, r"not an optforge checkpoint"),
    ("compressed", _compressed, r"compressed"),
    ("truncated-half", lambda b: b[:len(b) // 2], r"not an optforge checkpoint"),
    ("truncated-tail", lambda b: b[:-10], r"not an optforge checkpoint"),
    ("flipped-byte-early", _flip(0.3), r"not an optforge checkpoint"),
    ("flipped-byte-late", _flip(0.7), r"not an optforge checkpoint"),
    ("wrong-format", lambda b: _rewrite(b, _set(["format"], "other")), r"another format"),
    ("wrong-version", lambda b: _rewrite(b, _set(["version"], 99)), r"version 99 is not supported"),
    ("header-not-object", lambda b: _rewrite(b, lambda h: h.clear()), r"another format"),
    ("states-not-list", lambda b: _rewrite(b, _set(["states"], {"a": 1})), r"states must be a list"),
    ("shape-str", lambda b: _rewrite(b, _set(["states", 0, "shape"], "4x3")), r"bad shape"),
    ("shape-mismatch", lambda b: _rewrite(b, _set(["states", 0, "shape"], [3, 4])), r"header says"),
    ("dtype-object", lambda b: _rewrite(b, _set(["states", 0, "dtype"], "object")), r"bad dtype"),
    ("index-bool", lambda b: _rewrite(b, _set(["states", 0, "index"], ["int", True])), r"bad index entry"),
    ("index-missing", lambda b: _rewrite(b, lambda h: h["states"][0].pop("index")), r"damaged checkpoint: KeyError"),
    ("scalar-code", lambda b: _rewrite(b, _set(["states", 0, "scalars"], {"m": {"eval": "1"}})), r"scalars|bad value"),
    ("missing-array", lambda b: _rewrite(b, _set(["states", 0, "tensors"], ["mean", "var", "extra"])), r"needs"),
    ("extra-array", lambda b: _rewrite(b, x=np.zeros(3)), r"unexpected arrays \['x'\]"),
    ("int-array", lambda b: _rewrite(b, **{"s0.mean": np.zeros((4, 3), np.int32)}), r"s0.mean.*int32"),
    ("big-endian", lambda b: _rewrite(b, **{"s0.mean": np.zeros((4, 3), ">f4")}), r"s0.mean"),
    ("owner-other", lambda b: _rewrite(b, _set(["owner", "name"], "SGD")), r"belong to a SGD optimizer"),
    ("opt-name-unknown", lambda b: _rewrite(b, _set(["optimizer", "name"], "evil")), r"'evil' is not registered"),
    ("opt-beta1-out-of-range", lambda b: _rewrite(b, _set(["optimizer", "hyper", "beta1"], 2.0)), r"Invalid beta1 value"),
    ("opt-beta1-str", lambda b: _rewrite(b, _set(["optimizer", "hyper", "beta1"], "0.9")), r"bad optimizer record.*beta1"),
    ("opt-unknown-hyper", lambda b: _rewrite(b, _set(["optimizer", "hyper", "gamma"], 1.0)), r"unexpected keyword argument 'gamma'"),
    ("opt-num-update-str", lambda b: _rewrite(b, _set(["optimizer", "num_update"], "3")), r"num_update must be an integer"),
    ("opt-counts-bad", lambda b: _rewrite(b, _set(["optimizer", "counts"], [[["int", 0], [[["int", 0], -1]]]])), r"counts value"),
    ("opt-context-missing", lambda b: _rewrite(b, _set(["optimizer", "context"], ["int", 7])), r"current context"),
    ("opt-lr-mult-str", lambda b: _rewrite(b, _set(["optimizer", "lr_mult"], [[["int", 0], "2"]])), r"lr_mult value"),
    ("opt-scheduler-bad", lambda b: _rewrite(b, _set(["optimizer", "lr_scheduler"], {"type": "os.system", "args": {}})), r"unknown scheduler type"),
    ("opt-rng-bad", lambda b: _rewrite(b, _set(["optimizer", "rng"], {"dict": {"bit_generator": "Evil"}})), r"bad RNG state"),
    ("opt-rng-state-bad", lambda b: _rewrite(b, _set(["optimizer", "rng", "dict", "state"], 5)), r"bad optimizer record"),
    ("opt-globals-list", lambda b: _rewrite(b, _set(["optimizer", "globals"], [1])), r"bad globals"),
    ("opt-base-unknown", lambda b: _rewrite(b, _set(["optimizer", "base", "evil"], 1)), r"unexpected keyword argument 'evil'"),
]


@pytest.mark.parametrize("case_id,make,regex", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_rejected_and_updater_unchanged(tmp_path, case_id, make, regex):
    good = _trained().get_states(dump_optimizer=True)
    path = tmp_path / "bad.npz"
    path.write_bytes(make(good))
    upd = _trained()
    before = _fingerprint(upd)
    with pytest.raises(ValueError, match=regex):
        upd.load_states(path)
    assert _fingerprint(upd) == before
    with pytest.raises(ValueError):
        optforge.load_states(path)
    assert not os.path.exists("/tmp/optforge-pwned")


def test_bad_file_table_covers_enough():
    assert len(BAD_FILES) >= 25


def test_states_of_another_optimizer_or_configuration_are_rejected(tmp_path):
    _trained("adam").save_states(tmp_path / "adam.npz", dump_optimizer=False)
    upd = _trained("sgd")
    with pytest.raises(ValueError, match="belong to a Adam optimizer, not SGD"):
        upd.load_states(tmp_path / "adam.npz")
    _trained("sgd").save_states(tmp_path / "sgd.npz", dump_optimizer=False)
    upd = _trained("sgd", momentum=0.9)
    before = _fingerprint(upd)
    with pytest.raises(ValueError, match=r"holds \[\] .* needs \['mom'\]"):
        upd.load_states(tmp_path / "sgd.npz")
    assert _fingerprint(upd) == before


@pytest.mark.parametrize("dump", [True, False])
def test_spec_hash_mismatch_is_an_error_unless_allowed(tmp_path, monkeypatch, dump):
    path = tmp_path / "c.npz"
    _trained("adam").save_states(path, dump_optimizer=dump)
    monkeypatch.setattr(optforge.Adam, "spec_hash", "0000000000000000")
    upd = _trained("adam")
    before = _fingerprint(upd)
    with pytest.raises(ValueError, match=r"spec '.*', the installed spec \(specs/adam.opt\) is '0000000000000000'.*"
                                         r"allow_spec_change=True"):
        upd.load_states(path)
    assert _fingerprint(upd) == before
    with pytest.warns(UserWarning, match="the update rule may differ"):
        upd.load_states(path, allow_spec_change=True)


def test_set_states_needs_bytes():
    with pytest.raises(TypeError, match="states must be bytes"):
        _trained().set_states("not bytes")


# ---- atomic writes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fail", ["replace", "fsync", "write"])
def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, fail):
    path = tmp_path / "ckpt.npz"
    old = _trained("adam")
    old.save_states(path)
    old_bytes = path.read_bytes()
    newer = _trained("sgd", momentum=0.9)

    def boom(*a, **k):
        raise OSError("disk on fire")
    if fail == "write":
        real_fdopen = os.fdopen

        class Half:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                raise OSError("disk full")

            def __getattr__(self, name):
                return getattr(self.f, name)
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: Half(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(os, fail, boom)
    with pytest.raises(OSError):
        newer.save_states(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert type(optforge.load_states(path).optimizer).__name__ == "Adam"


def test_save_replaces_and_keeps_mode(tmp_path):
    path = tmp_path / "ckpt.npz"
    _trained("adam").save_states(path)
    os.chmod(path, 0o600)
    _trained("sgd").save_states(path)
    assert type(optforge.load_states(path).optimizer).__name__ == "SGD"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def _with_header(blob, edit):
    """The checkpoint `blob` with its JSON header changed by `edit(header)`."""
    import io
    import json
    from optforge.updater import _read_npz
    files = _read_npz(blob)
    header = json.loads(files.pop("__header__").tobytes().decode())
    edit(header)
    buf = io.BytesIO()
    np.savez(buf, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8), **files)
    return buf.getvalue()


@pytest.mark.parametrize("field,value", [("scalar", "a string"), ("scalar", None), ("scalar", {"list": [1, 2]}),
                                         ("scalar", 10 ** 400), ("count", 10 ** 400), ("global", {"list": [1]})])
def test_checkpoint_values_are_type_checked(field, value):
    """A scalar state, a global or a counter of the wrong type (or too large for any later update to
    use) is a damaged checkpoint, refused on load, not an error in every later update."""
    from optforge.updater import loads_states
    name = "nadam" if field == "scalar" else "lars"
    upd = optforge.get_updater(optforge.create(name, learning_rate=0.1, **({"momentum": 0.9} if name == "lars" else {})))
    w, g = np.ones(4, np.float32), np.ones(4, np.float32)
    upd(0, g, w)
    blob = upd.get_states(dump_optimizer=True)
    loads_states(blob)   # the intact one loads

    def edit(h):
        if field == "scalar":
            key = next(iter(h["states"][0]["scalars"]))
            h["states"][0]["scalars"][key] = value
        elif field == "count":
            h["optimizer"]["num_update"] = value
        else:
            h["optimizer"]["globals"] = {k: value for k in h["optimizer"]["globals"]} or {"last_lr": value}
    with pytest.raises(ValueError, match="damaged checkpoint|bad optimizer record"):
        loads_states(_with_header(blob, edit))
